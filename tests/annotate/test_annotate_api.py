"""Every endpoint of the annotation app, and the requests it must refuse with a 4xx JSON answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from semsim_audit.annotate.app import create_app
from semsim_audit.annotate.items import load_items
from semsim_audit.annotate.store import LabelStore, read_labels

FIRST = "round-1.client-7.reconstruction-0"
SECOND = "round-1.client-7.reconstruction-1"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def client(run_folder: Path, out: Path) -> TestClient:
    app = create_app(load_items(run_folder), LabelStore(out / "labels.jsonl", "alice"))
    return TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False)


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text and "http" not in page.text.split("<body>")[1]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/index.html").status_code == 404


def test_session_and_item_list(client: TestClient) -> None:
    session = client.get("/api/session").json()
    assert session == {"annotator": "alice", "source": "run", "kind": "run", "total": 6,
                       "answers": ["recognizable", "not_recognizable", "skip"]}
    listed = client.get("/api/items").json()["items"]
    assert [entry["id"] for entry in listed][:2] == [FIRST, SECOND]
    assert all(entry["answer"] is None for entry in listed)


def test_item_and_its_images(client: TestClient, run_folder: Path) -> None:
    item = client.get(f"/api/items/{FIRST}").json()
    assert item == {"id": FIRST, "position": 1, "answer": None,
                    "original": f"/api/items/{FIRST}/original",
                    "reconstruction": f"/api/items/{FIRST}/reconstruction"}
    original = client.get(item["original"])
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == (run_folder / "images/round-1/client-7/original-0.png").read_bytes()
    reconstruction = client.get(item["reconstruction"])
    saved = run_folder / "images/round-1/client-7/reconstruction-0.png"
    assert reconstruction.content == saved.read_bytes()


def test_answers_progress_and_undo(client: TestClient, out: Path) -> None:
    assert client.get("/api/progress").json() == {
        "done": 0, "total": 6, "next": FIRST, "counts": {"recognizable": 0, "not_recognizable": 0, "skip": 0}}
    posted = client.post("/api/answers", json={"item": FIRST, "answer": "recognizable"})
    assert posted.status_code == 201
    assert posted.json()["progress"]["done"] == 1 and posted.json()["progress"]["next"] == SECOND
    client.post("/api/answers", json={"item": SECOND, "answer": "skip"})
    assert client.get(f"/api/items/{SECOND}").json()["answer"] == "skip"

    undone = client.post("/api/undo")
    assert undone.status_code == 200
    assert undone.json()["undone"] == SECOND and undone.json()["item"]["answer"] is None
    assert undone.json()["progress"]["next"] == SECOND
    assert client.post("/api/undo").json()["undone"] == FIRST
    nothing = client.post("/api/undo")
    assert nothing.status_code == 409 and nothing.json() == {"detail": "nothing to undo"}
    assert [(r.item, r.answer) for r in read_labels(out / "labels.jsonl")] == [
        (FIRST, "recognizable"), (SECOND, "skip"), (SECOND, "undo"), (FIRST, "undo")]


def test_progress_reaches_the_end(client: TestClient) -> None:
    for entry in client.get("/api/items").json()["items"]:
        client.post("/api/answers", json={"item": entry["id"], "answer": "not_recognizable"})
    progress = client.get("/api/progress").json()
    assert progress["done"] == progress["total"] == 6 and progress["next"] is None


def test_a_restarted_server_resumes(run_folder: Path, out: Path, client: TestClient) -> None:
    client.post("/api/answers", json={"item": FIRST, "answer": "recognizable"})
    again = TestClient(create_app(load_items(run_folder), LabelStore(out / "labels.jsonl", "alice")),
                       base_url="http://127.0.0.1:8765")
    assert again.get("/api/progress").json()["next"] == SECOND
    other = TestClient(create_app(load_items(run_folder), LabelStore(out / "labels.jsonl", "bob")),
                       base_url="http://localhost:8765")
    assert other.get("/api/progress").json()["done"] == 0


@pytest.mark.parametrize("path", [
    "/api/items/nope",
    "/api/items/nope/original",
    f"/api/items/{FIRST}/thumbnail",
    "/api/items/..%2F..%2Freport.json/original",
    "/api/items/%2E%2E/original",
    "/api/items/../../report.json",
    "/static/..%2Fannotate%2Fapp.py",
    "/no-such-page",
])
def test_unknown_items_and_traversal_get_json_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.parametrize("body", [
    {"item": FIRST, "answer": "maybe"},
    {"item": FIRST},
    {"answer": "skip"},
    {"item": "../labels", "answer": "skip"},
    {"item": FIRST, "answer": "skip", "annotator": "mallory"},
    {"item": 3, "answer": "skip"},
    [],
])
def test_malformed_answers_get_422(client: TestClient, out: Path, body: object) -> None:
    response = client.post("/api/answers", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert not (out / "labels.jsonl").exists()


def test_bodies_that_are_not_json_are_refused(client: TestClient, out: Path) -> None:
    broken = client.post("/api/answers", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422
    # A cross-site form post arrives as text/plain: it must not count as an answer.
    form = client.post("/api/answers", content=b'{"item": "%s", "answer": "skip"}' % FIRST.encode(),
                       headers={"content-type": "text/plain"})
    assert form.status_code == 422
    assert client.post("/api/answers", json={"item": "ghost", "answer": "skip"}).status_code == 404
    assert not (out / "labels.jsonl").exists()


def test_wrong_methods_get_405(client: TestClient) -> None:
    assert client.get("/api/answers").status_code == 405
    assert client.delete(f"/api/items/{FIRST}").status_code == 405
    assert client.put("/api/undo").json() == {"detail": "Method Not Allowed"}


def test_foreign_host_headers_are_refused(client: TestClient) -> None:
    response = client.get("/api/session", headers={"host": "evil.example:8765"})
    assert response.status_code == 400 and "host not allowed" in response.json()["detail"]
    assert client.get("/api/session", headers={"host": "localhost:8765"}).status_code == 200


def test_a_broken_labels_file_is_a_500_without_traceback(client: TestClient, out: Path) -> None:
    out.mkdir(parents=True)
    (out / "labels.jsonl").write_text("garbage\nmore garbage\n")
    response = client.get("/api/progress")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (see the server log)"}
    assert "Traceback" not in response.text


def test_the_server_writes_nothing_but_the_labels_file(client: TestClient, run_folder: Path,
                                                       out: Path) -> None:
    source_before = _files_under(run_folder)
    client.post("/api/answers", json={"item": FIRST, "answer": "recognizable"})
    client.post("/api/answers", json={"item": "../../escape", "answer": "skip"})
    client.get("/api/items/..%2F..%2Fescape/original")
    client.post("/api/undo")
    assert _files_under(out) == {"labels.jsonl"}
    assert _files_under(run_folder) == source_before
    assert not (out.parent / "escape").exists()


def test_shuffled_order_is_fixed_per_annotator(run_folder: Path, out: Path) -> None:
    items = load_items(run_folder)

    def order(annotator: str) -> list[str]:
        client = TestClient(create_app(items, LabelStore(out / "labels.jsonl", annotator), shuffle=True),
                            base_url="http://127.0.0.1")
        return [entry["id"] for entry in client.get("/api/items").json()["items"]]

    assert order("alice") == order("alice") != items.ids
    assert sorted(order("alice")) == sorted(items.ids)
    assert order("alice") != order("bob")
    shuffled = TestClient(create_app(items, LabelStore(out / "labels.jsonl", "alice"), shuffle=True),
                          base_url="http://127.0.0.1")
    first = order("alice")[0]
    assert shuffled.get("/api/progress").json()["next"] == first
    assert shuffled.get(f"/api/items/{first}").json()["position"] == 1


def test_serve_binds_to_loopback_only(run_folder: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from semsim_audit.annotate.app import serve

    bound: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: bound.update(options, app=app))
    serve(load_items(run_folder), LabelStore(out / "labels.jsonl", "alice"), port=9123)
    assert bound["host"] == "127.0.0.1" and bound["port"] == 9123
    assert TestClient(bound["app"], base_url="http://127.0.0.1").get("/api/session").status_code == 200
