"""The labels file: appends, replacements, undo, several annotators, concurrency, damaged files."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from semsim_audit.annotate.store import LabelStore, effective_answers, read_labels, validate_annotator


def test_every_answer_is_one_appended_line(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels.jsonl", "alice")
    store.answer("a", "recognizable")
    store.answer("b", "not_recognizable")
    store.answer("a", "skip")
    lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [(x["annotator"], x["item"], x["answer"]) for x in lines] == [
        ("alice", "a", "recognizable"), ("alice", "b", "not_recognizable"), ("alice", "a", "skip")]
    assert all(x["time"].endswith("+00:00") for x in lines)
    # A later answer to the same item replaces the earlier one.
    assert store.answers() == {"a": "skip", "b": "not_recognizable"}


def test_undo_withdraws_the_latest_answer_and_restores_the_one_before(tmp_path: Path) -> None:
    assert LabelStore(tmp_path / "fresh" / "labels.jsonl", "alice").undo() is None
    assert not (tmp_path / "fresh").exists()
    store = LabelStore(tmp_path / "labels.jsonl", "alice")
    store.answer("a", "recognizable")
    store.answer("b", "recognizable")
    store.answer("a", "not_recognizable")
    undone = store.undo()
    assert undone is not None and undone.item == "a" and undone.answer == "undo"
    assert store.answers() == {"a": "recognizable", "b": "recognizable"}
    assert store.undo().item == "b"
    assert store.undo().item == "a"
    assert store.undo() is None
    assert store.answers() == {}
    # Undo is recorded, never a rewrite: 3 answers + 3 undo lines.
    assert len(read_labels(tmp_path / "labels.jsonl")) == 6


def test_annotators_share_a_file_without_touching_each_other(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    alice, bob = LabelStore(path, "alice"), LabelStore(path, "bob")
    alice.answer("a", "recognizable")
    bob.answer("a", "not_recognizable")
    alice.undo()
    assert alice.answers() == {}
    assert bob.answers() == {"a": "not_recognizable"}
    assert effective_answers(read_labels(path)) == {"bob": {"a": "not_recognizable"}}


def test_a_new_store_resumes_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "labels.jsonl"
    LabelStore(path, "alice").answer("x", "recognizable")
    assert LabelStore(path, "alice").answers() == {"x": "recognizable"}


def _hammer(path: str, annotator: str, count: int) -> None:
    store = LabelStore(path, annotator)
    for i in range(count):
        store.answer(f"item-{i}", "recognizable" if i % 2 else "not_recognizable")


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_hammer, args=(str(path), f"ann{k}", 150)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    records = read_labels(path)
    assert len(records) == 600
    answers = effective_answers(records)
    assert sorted(answers) == ["ann0", "ann1", "ann2", "ann3"]
    assert all(len(given) == 150 for given in answers.values())


def test_an_undo_that_names_another_item_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    LabelStore(path, "alice").answer("a", "recognizable")
    with path.open("a") as handle:
        handle.write('{"annotator": "alice", "item": "b", "answer": "undo", "time": "t"}\n')
    assert LabelStore(path, "alice").answers() == {"a": "recognizable"}


def test_a_truncated_last_line_is_ignored_but_damage_elsewhere_is_named(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path, "alice")
    store.answer("a", "recognizable")
    with path.open("a") as handle:
        handle.write('{"annotator": "alice", "item": "b", "ans')
    assert store.answers() == {"a": "recognizable"}
    path.write_text('not json\n{"annotator": "alice", "item": "a", "answer": "skip", "time": "t"}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:1: not valid JSON"):
        read_labels(path)
    path.write_text('{"annotator": "alice", "item": "a", "answer": "maybe", "time": "t"}\n')
    with pytest.raises(ValueError, match="answer 'maybe'"):
        read_labels(path)


def test_bad_answers_and_annotators_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="annotator"):
        LabelStore(tmp_path / "labels.jsonl", "../evil")
    with pytest.raises(ValueError, match="annotator"):
        validate_annotator("")
    store = LabelStore(tmp_path / "labels.jsonl", "alice")
    with pytest.raises(ValueError, match="answer 'undo'"):
        store.answer("a", "undo")
    assert not (tmp_path / "labels.jsonl").exists()
