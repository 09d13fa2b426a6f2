"""The annotation web app: the page, the item images, answers, undo and progress for one annotator.

Safety, because the server runs on a person's machine beside their data:
- :func:`serve` binds to 127.0.0.1 only, and requests whose Host header is not a loopback name are
  refused, so a web page elsewhere cannot reach the app through DNS rebinding;
- item ids are looked up in the loaded item set, never joined into a path; images are served from
  the paths the SOURCE listed at start;
- JSON bodies must say ``Content-Type: application/json`` (a cross-site form cannot send that without
  a CORS preflight, which this app does not answer);
- every error is a JSON body with a 4xx status; an unexpected failure answers a bare 500 JSON body,
  never a traceback;
- the only file the app writes is the labels file of its :class:`LabelStore` (inside --out).
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from semsim_audit.annotate.items import IMAGE_TYPES, ITEM_ID_PATTERN, Item, ItemSet
from semsim_audit.annotate.store import ANSWERS, Answer, LabelStore

__all__ = ["create_app", "serve", "presentation_order", "LOOPBACK"]

LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_log = logging.getLogger(__name__)


class AnswerIn(BaseModel):
    """The body of POST /api/answers."""

    model_config = ConfigDict(extra="forbid")

    item: str = Field(pattern=ITEM_ID_PATTERN)
    answer: Answer


def _web_file(name: str) -> str:
    return (_WEB_DIR / name).read_text(encoding="utf-8")


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if ":" in host_header else host_header


def presentation_order(items: ItemSet, annotator: str, shuffle: bool) -> list[str]:
    """The order items are shown in: the source's, or a shuffle fixed per annotator.

    Shuffling keeps one annotator's judgement of, say, early rounds from anchoring the later ones; it
    is seeded by the annotator's name so a resumed session and a reloaded page see the same order.
    """
    order = list(items.ids)
    if shuffle:
        seed = int.from_bytes(hashlib.sha256(annotator.encode("utf-8")).digest()[:8], "big")
        random.Random(seed).shuffle(order)
    return order


def create_app(items: ItemSet, store: LabelStore, shuffle: bool = False) -> FastAPI:
    """The app for one annotator (``store.annotator``) judging ``items``."""
    order = presentation_order(items, store.annotator, shuffle)
    position = {item_id: index + 1 for index, item_id in enumerate(order)}
    page = _web_file("index.html")
    static = {name: _web_file(name) for name in _STATIC}
    app = FastAPI(title="semsim-audit annotate", docs_url=None, redoc_url=None, openapi_url=None,
                  strict_content_type=True)

    @app.middleware("http")
    async def loopback_host_only(request: Request, call_next: Any) -> Response:
        if _host_name(request.headers.get("host", "")) not in _LOOPBACK_NAMES:
            return JSONResponse({"detail": "host not allowed: open the page at http://127.0.0.1"},
                                status_code=400)
        return await call_next(request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        _log.exception("annotate: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (see the server log)"}, status_code=500)

    def item_or_404(item_id: str) -> Item:
        item = items.get(item_id)
        if item is None:
            raise HTTPException(status_code=404, detail=f"no item {item_id!r}")
        return item

    def progress(answers: dict[str, str] | None = None) -> dict[str, Any]:
        answers = store.answers() if answers is None else answers
        given = [answers[i] for i in order if i in answers]
        pending = next((i for i in order if i not in answers), None)
        return {
            "done": len(given),
            "total": len(items),
            "next": pending,
            "counts": {answer: given.count(answer) for answer in ANSWERS},
        }

    def describe(item: Item, answers: dict[str, str]) -> dict[str, Any]:
        return {
            "id": item.id,
            "position": position[item.id],
            "answer": answers.get(item.id),
            "original": f"/api/items/{item.id}/original",
            "reconstruction": f"/api/items/{item.id}/reconstruction",
        }

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "no-store"})

    @app.get("/api/session")
    def session() -> dict[str, Any]:
        return {"annotator": store.annotator, "source": items.source.name, "kind": items.kind,
                "total": len(items), "answers": list(ANSWERS)}

    @app.get("/api/progress")
    def get_progress() -> dict[str, Any]:
        return progress()

    @app.get("/api/items")
    def list_items() -> dict[str, Any]:
        answers = store.answers()
        return {"items": [{"id": i, "answer": answers.get(i)} for i in order]}

    @app.get("/api/items/{item_id}")
    def get_item(item_id: str) -> dict[str, Any]:
        return describe(item_or_404(item_id), store.answers())

    @app.get("/api/items/{item_id}/{which}")
    def image(item_id: str, which: str) -> FileResponse:
        item = item_or_404(item_id)
        if which not in ("original", "reconstruction"):
            raise HTTPException(status_code=404, detail="image must be 'original' or 'reconstruction'")
        path = item.original if which == "original" else item.reconstruction
        if not path.is_file():
            raise HTTPException(status_code=410, detail=f"the {which} image of {item_id!r} is gone")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()],
                            headers={"Cache-Control": "no-cache"})

    @app.post("/api/answers", status_code=201)
    def post_answer(body: AnswerIn) -> dict[str, Any]:
        item = item_or_404(body.item)
        record = store.answer(item.id, body.answer)
        return {"item": item.id, "answer": record.answer, "time": record.time, "progress": progress()}

    @app.post("/api/undo")
    def undo() -> dict[str, Any]:
        record = store.undo()
        if record is None:
            raise HTTPException(status_code=409, detail="nothing to undo")
        answers = store.answers()
        undone = items.get(record.item)
        return {
            "undone": record.item,
            "item": describe(undone, answers) if undone is not None else None,
            "progress": progress(answers),
        }

    return app


def serve(items: ItemSet, store: LabelStore, port: int, shuffle: bool = False) -> None:
    """Run the app on http://127.0.0.1:<port> until interrupted."""
    uvicorn.run(create_app(items, store, shuffle=shuffle), host=LOOPBACK, port=port, log_level="warning")
