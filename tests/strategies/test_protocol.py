"""The audit's records round-trip, and malformed ones are refused naming what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from semsim_audit.core import DataSpec
from semsim_audit.report import ReconstructionScore
from semsim_audit.strategies.protocol import (
    AuditRecord,
    ScoreAnswer,
    ScoreRequest,
    audit_records,
    decode_answer,
    decode_record,
    decode_request,
    encode_answer,
    encode_record,
    encode_request,
)

SPEC = DataSpec(shape=(3, 4, 4), num_classes=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _answer(**changes) -> ConfigRecord:
    scores = [ReconstructionScore(original_index=1, reconstruction_index=0, semsim=0.2, recognizable=True,
                                  psnr=20.0, ssim=0.5, true_label=2, recovered_label=2, identified=True)]
    record = encode_answer(ScoreAnswer(3, "ok", scores=scores, label_accuracy=1.0))
    for key, value in changes.items():
        record[key] = value
    return record


def test_record_request_and_answer_round_trip() -> None:
    record = decode_record(encode_record(AuditRecord(2, 4, 8, 30, 30, True, torch.arange(30) % 3, "n")))
    assert (record.audit_id, record.local_steps, record.batch_size, record.scoring_handler) == (2, 4, 8, True)
    assert record.labels.tolist() == (torch.arange(30) % 3).tolist()

    images = torch.rand(2, 3, 4, 4)
    sent = ScoreRequest(5, images, torch.tensor([1, 2]), SPEC, "abc", b"ck")
    request = decode_request(encode_request(sent))
    assert torch.equal(request.reconstructions, images) and request.spec == SPEC
    assert (request.recovered_labels.tolist(), request.judge_sha256, request.judge) == ([1, 2], "abc", b"ck")

    answer = decode_answer(_answer(), num_reconstructions=1)
    assert answer.status == "ok" and answer.label_accuracy == 1.0
    assert answer.scores[0].semsim == 0.2 and answer.scores[0].original_image is None


def test_a_failed_answer_keeps_its_reason() -> None:
    raw = encode_answer(ScoreAnswer(3, "failed", reason="no originals"))
    assert decode_answer(raw, 1).reason == "no originals"


@pytest.mark.parametrize(("raw", "match"), [
    (MetricRecord({"x": 1.0}), "ConfigRecord"),
    (ConfigRecord({"status": "ok"}), "lacks 'audit-id'"),
    (_answer(status="great"), "unknown status"),
    (_answer(scores="not json"), "unreadable scores"),
    (_answer(scores="[]"), "unreadable scores"),
    (_answer(scores=json.dumps([{"original_index": "zero"}])), "unreadable scores"),
    (_answer(scores=json.dumps([{"original_index": 0, "reconstruction_index": 5}])), "do not fit"),
    (_answer(**{"label-accuracy": 3.0}), "outside"),
    (_answer(originals=b"\x00" * 8, **{"originals-shape": [1, 3, 4, 4]}), "do not fit"),
    (_answer(**{"audit-id": "three"}), "'audit-id' is a str"),
])
def test_garbage_answers_are_refused_naming_the_problem(raw, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_answer(raw, num_reconstructions=1)


@pytest.mark.parametrize(("record", "match"), [
    (ConfigRecord({"audit-id": 1}), "lacks 'local-steps'"),
    (encode_record(AuditRecord(1, 1, 1, 2, 2, False, torch.tensor([0]))), "2 images but 1 labels"),
    (MetricRecord({"x": 1.0}), "ConfigRecord"),
])
def test_malformed_audit_record_raises_naming_the_problem(record, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_record(record)


def test_malformed_request_raises_naming_the_problem() -> None:
    raw = encode_request(ScoreRequest(5, torch.rand(1, 3, 4, 4), None, SPEC, "abc"))
    raw["reconstructions"] = b"\x00" * 4
    with pytest.raises(ValueError, match="do not fit"):
        decode_request(raw)


def test_audit_records_are_found_by_prefix_and_round() -> None:
    content = RecordDict({"audit.score.3": ConfigRecord({}), "audit.score.x": ConfigRecord({}),
                          "audit.scores.3": ConfigRecord({})})
    assert list(audit_records(content, "audit.score.")) == [3]
