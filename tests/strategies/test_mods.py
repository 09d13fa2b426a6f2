"""Client side: originals stay on the client (bounded), replies carry numbers, scoring happens here."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

import semsim_audit.strategies.mods as mods
from semsim_audit.core import DataSpec
from semsim_audit.scoring import judge_checkpoint
from semsim_audit.strategies.mods import PENDING_PREFIX, audit_mod, record_batch
from semsim_audit.strategies.protocol import (
    ANSWER_PREFIX,
    CAPTURE_KEY,
    LABELS_KEY,
    RECORD_KEY,
    REQUEST_PREFIX,
    SCORING_MESSAGE_TYPE,
    ScoreRequest,
    decode_answer,
    decode_record,
    encode_request,
)

SPEC = DataSpec(shape=(3, 8, 8), num_classes=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _context(**run_config) -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=run_config)


def _message(audit_round: int | None, message_type: str = MessageType.TRAIN, **records) -> Message:
    config = ConfigRecord({"lr": 0.1, **({CAPTURE_KEY: audit_round} if audit_round else {})})
    content = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(2)}), "config": config, **records})
    return Message(content, 7, message_type)


class Train:
    """A ClientApp body that records the given batches and remembers what it was handed."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.seen_keys: list[str] = []

    def __call__(self, msg: Message, context: Context) -> Message:
        self.seen_keys = list(msg.content.keys())
        for images, labels in self.batches:
            record_batch(images, labels)
        reply = RecordDict({"arrays": ArrayRecord({"w": torch.ones(2)}),
                            "metrics": MetricRecord({"num-examples": 1})})
        return Message(reply, reply_to=msg)


def _batch(seed: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.arange(n)


def _request(semsim, audit_round: int, reconstructions: torch.Tensor) -> ConfigRecord:
    sha256, checkpoint = judge_checkpoint(semsim)
    return encode_request(ScoreRequest(audit_id=audit_round, reconstructions=reconstructions,
                                       recovered_labels=torch.arange(reconstructions.shape[0]) % 3, spec=SPEC,
                                       judge_sha256=sha256, judge=checkpoint))


def _scoring_query(semsim, audit_round: int, reconstructions: torch.Tensor) -> Message:
    request = _request(semsim, audit_round, reconstructions)
    return Message(RecordDict({f"{REQUEST_PREFIX}{audit_round}": request}), 7, SCORING_MESSAGE_TYPE)


def _reply_bytes(reply: Message) -> bytes:
    """Every byte the reply carries: arrays and bytes/list values of every record."""
    chunks = [array.numpy().tobytes() for record in reply.content.array_records.values()
              for array in record.values()]
    for record in reply.content.config_records.values():
        chunks.extend(value for value in record.values() if isinstance(value, bytes))
    return b"".join(chunks)


def test_record_batch_outside_a_capture_is_a_no_op() -> None:
    record_batch(torch.zeros(1, 3, 8, 8), torch.zeros(1))


def test_unaudited_and_evaluate_messages_get_no_record() -> None:
    context = _context()
    assert RECORD_KEY not in audit_mod(_message(None), context, Train([_batch(0)])).content
    assert RECORD_KEY not in audit_mod(_message(1, MessageType.EVALUATE), context, Train([_batch(0)])).content
    assert not list(context.state.keys())


def test_capture_keeps_originals_on_the_client_and_the_reply_carries_numbers_only() -> None:
    first, second = _batch(0), _batch(1, n=3)
    context = _context(**{"audit-export-originals": True})  # export concerns scoring answers only
    # Two epochs over the same data: each distinct image is kept once, every step counted.
    reply = audit_mod(_message(4), context, Train([first, second, first]))
    record = decode_record(reply.content[RECORD_KEY])
    assert (record.audit_id, record.local_steps, record.batch_size) == (4, 3, 3)
    assert (record.distinct_images, record.kept_images, record.labels) == (5, 5, None)
    assert list(reply.content.array_records) == ["arrays"]  # the update itself is untouched
    assert first[0].numpy().tobytes()[:64] not in _reply_bytes(reply)
    kept = context.state[f"{PENDING_PREFIX}4"]
    assert kept["shape"] == [5, 3, 8, 8] and kept["labels"] == [0, 1, 0, 1, 2]


def test_labels_leave_only_when_the_server_asks_for_them() -> None:
    message = _message(1)
    message.content["config"][LABELS_KEY] = True
    reply = audit_mod(message, _context(), Train([_batch(0)]))
    assert decode_record(reply.content[RECORD_KEY]).labels.tolist() == [0, 1]


def test_capture_stops_at_max_images_and_says_so() -> None:
    reply = audit_mod(_message(1), _context(**{"audit-max-images": 3}), Train([_batch(0, n=4)]))
    record = decode_record(reply.content[RECORD_KEY])
    assert (record.distinct_images, record.kept_images) == (4, 3)
    assert "audit-max-images" in record.note


def test_pending_originals_are_bounded_oldest_dropped_first() -> None:
    context = _context(**{"audit-max-pending": 2})
    for audit_round in (1, 2, 3):
        audit_mod(_message(audit_round), context, Train([_batch(audit_round)]))
    assert sorted(context.state.keys()) == [f"{PENDING_PREFIX}2", f"{PENDING_PREFIX}3"]


def test_bad_audit_setting_does_not_stop_training_and_is_named() -> None:
    reply = audit_mod(_message(1), _context(**{"audit-max-images": "many"}), Train([_batch(0)]))
    assert not reply.has_error() and "arrays" in reply.content
    record = decode_record(reply.content[RECORD_KEY])
    assert record.kept_images == 0 and "audit-max-images" in record.note


def test_scoring_query_is_answered_with_numbers_and_the_originals_are_dropped(small_semsim) -> None:
    images, labels = _batch(0, n=3)
    context = _context()
    audit_mod(_message(2), context, Train([(images, labels)]))
    originals = SPEC.denormalize(images).clamp(0, 1)
    reply = audit_mod(_scoring_query(small_semsim, 2, originals.flip(0)), context, Train([]))
    answer = decode_answer(reply.content[f"{ANSWER_PREFIX}2"], 3)
    assert answer.status == "ok" and answer.originals is None
    # Exact copies in reverse order: matched back, judged recognizable, labels as the client knows them.
    pairs = sorted((s.original_index, s.reconstruction_index) for s in answer.scores)
    assert pairs == [(0, 2), (1, 1), (2, 0)]
    assert all(s.recognizable and s.identified for s in answer.scores)
    assert [s.true_label for s in sorted(answer.scores, key=lambda s: s.original_index)] == [0, 1, 2]
    assert answer.label_accuracy is not None
    assert images.numpy().tobytes()[:64] not in _reply_bytes(reply)
    assert f"{PENDING_PREFIX}2" not in context.state  # scored: dropped


def test_exporting_originals_is_the_clients_opt_in(small_semsim) -> None:
    images, labels = _batch(0, n=2)
    context = _context(**{"audit-export-originals": "true"})
    audit_mod(_message(1), context, Train([(images, labels)]))
    originals = SPEC.denormalize(images).clamp(0, 1)
    reply = audit_mod(_scoring_query(small_semsim, 1, originals), context, Train([]))
    answer = decode_answer(reply.content[f"{ANSWER_PREFIX}1"], 2)
    assert torch.allclose(answer.originals, originals[[s.original_index for s in answer.scores]])


def test_request_for_originals_no_longer_kept_fails_naming_the_setting(small_semsim) -> None:
    reply = audit_mod(_scoring_query(small_semsim, 9, torch.rand(1, 3, 8, 8)), _context(), Train([]))
    answer = decode_answer(reply.content[f"{ANSWER_PREFIX}9"], 1)
    assert answer.status == "failed" and "audit-max-pending" in answer.reason


def test_request_riding_on_a_train_message_is_hidden_from_the_app_and_answered(small_semsim) -> None:
    images, labels = _batch(0, n=2)
    context = _context()
    audit_mod(_message(1), context, Train([(images, labels)]))
    train = Train([_batch(5)])
    carrier = _message(2, **{f"{REQUEST_PREFIX}1": _request(small_semsim, 1, SPEC.denormalize(images))})
    reply = audit_mod(carrier, context, train)
    assert not any(key.startswith("audit.") for key in train.seen_keys)
    assert decode_answer(reply.content[f"{ANSWER_PREFIX}1"], 2).status == "ok"
    assert decode_record(reply.content[RECORD_KEY]).audit_id == 2  # its own capture goes on
    assert sorted(context.state.keys()) == [f"{PENDING_PREFIX}2"]


def test_capture_is_closed_after_the_message() -> None:
    audit_mod(_message(1), _context(), Train([_batch(0)]))
    assert mods._capture.get() is None


def test_mismatched_batch_raises() -> None:
    with pytest.raises(ValueError, match="3 labels"):
        audit_mod(_message(1), _context(), Train([(torch.zeros(2, 3, 8, 8), torch.zeros(3))]))
