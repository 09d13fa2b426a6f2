"""Reading sources (run folders, pair folders) and exporting the released layout with agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from semsim_audit.annotate.export import export_annotations, fleiss_kappa, pairwise_agreement, tally
from semsim_audit.annotate.items import load_items, validate_item_id
from semsim_audit.annotate.store import LabelStore, read_labels


def test_run_folder_items_follow_the_report(run_folder: Path) -> None:
    items = load_items(run_folder)
    assert items.kind == "run"
    assert items.ids == [f"round-{r}.client-7.reconstruction-{i}" for r in (1, 2) for i in range(3)]
    first = items.get("round-1.client-7.reconstruction-0")
    assert first.original == run_folder.resolve() / "images/round-1/client-7/original-0.png"
    assert first.label == 0 and first.meta["round"] == 1
    # The same client image attacked in two rounds is one identity; different images are not.
    same = items.get("round-2.client-7.reconstruction-0")
    other = items.get("round-1.client-7.reconstruction-1")
    assert first.identity == same.identity != other.identity


def test_run_folder_falls_back_to_the_jsonl_journal(run_folder: Path) -> None:
    (run_folder / "report.json").unlink()
    assert len(load_items(run_folder)) == 6


def test_run_folder_paths_may_not_leave_the_folder(run_folder: Path) -> None:
    report = json.loads((run_folder / "report.json").read_text())
    report["rounds"][0]["clients"][0]["scores"][0]["original_image"] = "../outside.png"
    (run_folder.parent / "outside.png").write_bytes((run_folder / "images/round-1/client-7/original-0.png")
                                                      .read_bytes())
    (run_folder / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="original_image '../outside.png' points outside"):
        load_items(run_folder)


def test_pair_folder_layout(pair_folder: Path) -> None:
    items = load_items(pair_folder)
    assert items.kind == "pairs"
    assert items.ids == ["cat_rec", "cat_rec-dlg", "dog_2_rec_a"]
    assert items.get("dog_2_rec_a").original.name == "dog_2_ori.png"
    assert items.get("cat_rec-dlg").identity == "cat"


def test_pair_folder_without_original_is_refused(pair_folder: Path) -> None:
    (pair_folder / "cat_ori.png").unlink()
    with pytest.raises(ValueError, match="cat_rec.png has no <name>_ori image"):
        load_items(pair_folder)


def test_empty_or_missing_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a folder"):
        load_items(tmp_path / "nope")
    with pytest.raises(ValueError, match="no report.json"):
        load_items(tmp_path)


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "a..b", "", ".hidden", "a b", "a\\b", "é"])
def test_item_ids_that_could_name_a_path_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="item id"):
        validate_item_id(bad)


def test_fleiss_kappa_matches_the_published_example() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_kappa_edges() -> None:
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)
    assert fleiss_kappa([[2, 0], [2, 0]]) is None  # one category only: undefined
    assert fleiss_kappa([[2, 0], [1, 0]]) is None  # one item with two ratings is not enough
    assert pairwise_agreement([2, 1]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="rectangle"):
        fleiss_kappa([[1, 2], [1]])


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _label(path: Path, annotator: str, answers: dict[str, str]) -> None:
    store = LabelStore(path, annotator)
    for item, answer in answers.items():
        store.answer(item, answer)


def test_majority_vote_ties_skips_and_min_votes(run_folder: Path, tmp_path: Path) -> None:
    items = load_items(run_folder)
    r1 = [f"round-1.client-7.reconstruction-{i}" for i in range(3)]
    labels = tmp_path / "labels.jsonl"
    _label(labels, "a", {r1[0]: "recognizable", r1[1]: "recognizable", r1[2]: "skip"})
    _label(labels, "b", {r1[0]: "recognizable", r1[1]: "not_recognizable", r1[2]: "skip"})
    _label(labels, "c", {r1[0]: "not_recognizable"})
    rows = {row["item"]: row for row in tally(items, read_labels(labels))}
    assert rows[r1[0]]["label"] == "recognizable" and rows[r1[0]]["agreement"] == pytest.approx(2 / 3)
    assert rows[r1[1]]["label"] == "tie"
    assert rows[r1[2]]["label"] == "unlabeled" and rows[r1[2]]["skip"] == 2
    strict = {row["item"]: row["label"] for row in tally(items, read_labels(labels), min_votes=3)}
    assert strict[r1[0]] == "recognizable" and strict[r1[1]] == "unlabeled"
    with pytest.raises(ValueError, match="min_votes"):
        tally(items, [], min_votes=0)


def test_export_writes_the_released_layout(run_folder: Path, tmp_path: Path) -> None:
    items = load_items(run_folder)
    labels = tmp_path / "labels.jsonl"
    close = {f"round-1.client-7.reconstruction-{i}": "recognizable" for i in range(3)}
    noise = {f"round-2.client-7.reconstruction-{i}": "not_recognizable" for i in range(3)}
    _label(labels, "a", {**close, **noise})
    _label(labels, "b", {**close, **noise, "round-2.client-7.reconstruction-2": "recognizable"})
    _label(labels, "b", {"ghost-item": "skip"})
    out = tmp_path / "export"
    summary = export_annotations(items, read_labels(labels), out)

    layout = out / "train_with_ori"
    assert _names(layout) == ["-0", "-1", "0", "1", "2"]
    assert _names(layout / "0") == ["0_0_ori.png", "round-1.client-7.reconstruction-0.png"]
    assert _names(layout / "-0") == ["round-2.client-7.reconstruction-0.png"]
    # The 1-1 tie on identity 2's noise reconstruction keeps it out of the layout.
    assert _names(layout / "2") == ["2_2_ori.png", "round-1.client-7.reconstruction-2.png"]
    copied = layout / "0" / "0_0_ori.png"
    assert copied.read_bytes() == (run_folder / "images/round-1/client-7/original-0.png").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind

    configurations = (out / "configurations.csv").read_text().splitlines()
    assert configurations[0] == "path,configuration" and len(configurations) == 1 + 5
    negative = "train_with_ori/-0/round-2.client-7.reconstruction-0.png"
    assert f"{negative},inverting-gradients/round-2" in configurations

    on_disk = json.loads((out / "agreement.json").read_text())
    assert on_disk == summary
    assert summary["counts"] == {"recognizable": 3, "not_recognizable": 2, "tie": 1, "unlabeled": 0}
    assert summary["annotators"] == ["a", "b"] and summary["unknown_items"] == ["ghost-item"]
    # 5 unanimous items and one split among 6 items with 2 raters each.
    assert summary["fleiss_kappa"] == pytest.approx(fleiss_kappa([[2, 0]] * 3 + [[0, 2]] * 2 + [[1, 1]]))
    per_item = {row["item"]: row for row in summary["per_item"]}
    assert per_item["round-2.client-7.reconstruction-1"]["file"] == \
        "train_with_ori/-1/round-2.client-7.reconstruction-1.png"

    with pytest.raises(ValueError, match="already holds an export"):
        export_annotations(items, read_labels(labels), out)
    # a withdraws the "not recognizable" that tied identity 2's noise: b's lone vote now decides it.
    assert LabelStore(labels, "a").undo().item == "round-2.client-7.reconstruction-2"
    again = export_annotations(items, read_labels(labels), out, force=True)
    assert again["counts"] == {"recognizable": 4, "not_recognizable": 2, "tie": 0, "unlabeled": 0}
    assert (layout / "2" / "round-2.client-7.reconstruction-2.png").is_file()


def test_export_of_a_pair_folder_converts_to_png(pair_folder: Path, tmp_path: Path) -> None:
    items = load_items(pair_folder)
    labels = tmp_path / "labels.jsonl"
    _label(labels, "a", {"cat_rec": "not_recognizable", "cat_rec-dlg": "recognizable"})
    export_annotations(items, read_labels(labels), tmp_path / "export")
    layout = tmp_path / "export" / "train_with_ori"
    assert _names(layout) == ["-0", "0"]
    assert _names(layout / "0") == ["0_ori.png", "cat_rec-dlg.png"]
    with Image.open(layout / "0" / "cat_rec-dlg.png") as image:
        assert image.format == "PNG"


def test_export_with_no_majority_is_refused(run_folder: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    _label(labels, "a", {"round-1.client-7.reconstruction-0": "recognizable"})
    _label(labels, "b", {"round-1.client-7.reconstruction-0": "not_recognizable"})
    with pytest.raises(ValueError, match=r"no item has a majority answer \(1 ties, 5 with fewer than 1"):
        export_annotations(load_items(run_folder), read_labels(labels), tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_run_folder_items_sort_by_number_and_bad_images_are_named(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", identities=12, rounds=1)
    ids = load_items(run).ids
    assert ids[2:4] == ["round-1.client-7.reconstruction-2", "round-1.client-7.reconstruction-3"]
    assert ids[-1] == "round-1.client-7.reconstruction-11"
    (run / "images/round-1/client-7/original-5.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*original-5.png"):
        load_items(run)
