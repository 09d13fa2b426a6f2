"""Client side: record_batch is a no-op unless audit_mod captures; what the mod attaches to replies."""

from __future__ import annotations

import logging

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

import semsim_audit.strategies.mods as mods
from semsim_audit.strategies.mods import CAPTURE_KEY, RECORD_KEY, audit_mod, decode_record, record_batch


def _context(**run_config) -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=run_config)


def _message(capture: bool, message_type: str = MessageType.TRAIN) -> Message:
    config = ConfigRecord({"lr": 0.1, **({CAPTURE_KEY: True} if capture else {})})
    content = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(2)}), "config": config})
    return Message(content, 7, message_type)


def _train(batches: list[tuple[torch.Tensor, torch.Tensor]]):
    def app(msg: Message, context: Context) -> Message:
        for images, labels in batches:
            record_batch(images, labels)
        reply = RecordDict({"arrays": ArrayRecord({"w": torch.ones(2)}),
                            "metrics": MetricRecord({"num-examples": 1})})
        return Message(reply, reply_to=msg)
    return app


def _batch(seed: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.arange(n)


def test_record_batch_outside_a_capture_is_a_no_op() -> None:
    record_batch(torch.zeros(1, 3, 8, 8), torch.zeros(1))


def test_unaudited_message_gets_no_record() -> None:
    reply = audit_mod(_message(capture=False), _context(**{"audit-export-originals": True}),
                      _train([_batch(0)]))
    assert RECORD_KEY not in reply.content


def test_evaluate_message_is_passed_through() -> None:
    reply = audit_mod(_message(True, MessageType.EVALUATE), _context(**{"audit-export-originals": True}),
                      _train([_batch(0)]))
    assert RECORD_KEY not in reply.content


def test_capture_records_distinct_images_steps_and_batch_size() -> None:
    first, second = _batch(0), _batch(1, n=3)
    # Two epochs over the same data: each distinct image is kept once, every step counted.
    reply = audit_mod(_message(True), _context(**{"audit-export-originals": True}),
                      _train([first, second, first]))
    record = decode_record(reply.content[RECORD_KEY])
    assert (record.exported, record.local_steps, record.batch_size) == (True, 3, 3)
    assert torch.equal(record.images, torch.cat([first[0], second[0]]))
    assert record.labels.tolist() == [0, 1, 0, 1, 2]
    assert list(reply.content.array_records) == ["arrays"]  # the update itself is untouched


def test_capture_stops_at_max_images() -> None:
    reply = audit_mod(_message(True), _context(**{"audit-export-originals": True, "audit-max-images": 3}),
                      _train([_batch(0, n=4)]))
    assert decode_record(reply.content[RECORD_KEY]).images.shape[0] == 3


def test_export_refused_without_run_config_and_said_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(mods, "_refusal_logged", False)
    with caplog.at_level(logging.WARNING, logger="semsim_audit"):
        for _ in range(2):
            reply = audit_mod(_message(True), _context(), _train([_batch(0)]))
    record = decode_record(reply.content[RECORD_KEY])
    assert not record.exported and record.images is None
    assert "audit-export-originals" in record.note
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "images" not in reply.content[RECORD_KEY]  # no pixels and no labels leave the client


def test_string_flag_in_run_config_is_understood() -> None:
    reply = audit_mod(_message(True), _context(**{"audit-export-originals": "true"}), _train([_batch(0)]))
    assert decode_record(reply.content[RECORD_KEY]).exported


def test_capture_is_closed_after_the_message() -> None:
    audit_mod(_message(True), _context(**{"audit-export-originals": True}), _train([_batch(0)]))
    assert mods._capture.get() is None


def test_mismatched_batch_raises() -> None:
    with pytest.raises(ValueError, match="3 labels"):
        audit_mod(_message(True), _context(**{"audit-export-originals": True}),
                  _train([(torch.zeros(2, 3, 8, 8), torch.zeros(3))]))


@pytest.mark.parametrize(("record", "match"), [
    (ConfigRecord({"exported": True}), "local-steps"),
    (ConfigRecord({"exported": True, "local-steps": 1, "batch-size": 1, "images": b"\x00" * 8,
                   "shape": [1, 3, 8, 8], "labels": [0]}), "do not fit"),
    (MetricRecord({"x": 1.0}), "ConfigRecord"),
])
def test_malformed_record_raises_naming_the_problem(record, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_record(record)
