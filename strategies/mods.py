"""Client side of the audit: the ``audit_mod`` Flower mod and ``record_batch`` for train loops.

The server marks the train messages of the clients it audits with ``audit.capture`` in their
config. For those messages ``audit_mod`` opens a capture; the train loop calls
:func:`record_batch` on every batch the model consumes (a no-op otherwise). After training, the
mod keeps the distinct images seen and their labels in the node's ``context.state`` (at most
``audit-max-pending`` audits, ``audit-max-images`` images each) and attaches only numbers to the
reply: the observed local step count, batch size and image count (``audit.record``).

When the server's reconstructions come back (a ``query.semsim_audit`` message, or a request riding
on a later train or evaluate message, see :mod:`semsim_audit.strategies.protocol`), ``audit_mod``
scores them against the kept originals, drops those originals, and answers with the scores. The
originals themselves leave the client only when its run config says ``audit-export-originals``
(for the report's pictures; ``run_audited_simulation`` turns it on).

Put ``audit_mod`` FIRST in ``ClientApp(mods=[...])`` (``AuditedClientApp`` does): the first mod
is the outermost, so its record is added after every defense mod has transformed the update, and
those mods (e.g. Flower's ``fixedclipping_mod``, which insists on exactly one ArrayRecord) see a
plain message and a plain reply.
"""

from __future__ import annotations

import hashlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from semsim_audit.scoring import label_accuracy, load_judge, score_reconstructions
from semsim_audit.semsim import SemSim
from semsim_audit.strategies.protocol import (
    ANSWER_PREFIX,
    CAPTURE_KEY,
    EXPORT_ORIGINALS_KEY,
    KEY_RECORD_KEY,
    LABELS_KEY,
    MAX_IMAGES_KEY,
    MAX_PENDING_KEY,
    RECORD_KEY,
    REQUEST_PREFIX,
    SCORING_MESSAGE_TYPE,
    AuditRecord,
    ScoreAnswer,
    audit_records,
    decode_request,
    encode_answer,
    encode_record,
    pack_images,
    unpack_images,
)

__all__ = ["audit_mod", "record_batch", "scoring_handler", "PENDING_PREFIX", "DEFAULT_MAX_IMAGES",
           "DEFAULT_MAX_PENDING"]

PENDING_PREFIX = "audit.pending."
DEFAULT_MAX_IMAGES = 256
DEFAULT_MAX_PENDING = 4

_log = logging.getLogger("semsim_audit")
_capture: ContextVar[_Capture | None] = ContextVar("semsim_audit_capture", default=None)
# Set while an AuditedClientApp handles a message: query.semsim_audit reaches this app's mods.
scoring_handler: ContextVar[bool] = ContextVar("semsim_audit_scoring_handler", default=False)
# Judges per process (a simulation's Ray actors handle many messages each), by the whole checkpoint
# sent: the weights' sha256 alone would let two judges with one network but different thresholds
# or borderline bands share an entry.
_judges: dict[tuple[str, str], SemSim] = {}


@dataclass
class _Capture:
    """What one audited train message's loop consumed: distinct images, labels, step count."""

    max_images: int
    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    steps: int = 0
    batch_size: int = 0
    seen: set[bytes] = field(default_factory=set)

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.detach().to("cpu", torch.float32)
        labels = torch.as_tensor(labels).detach().to("cpu").reshape(-1)
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"record_batch: {images.shape[0]} images but {labels.shape[0]} labels")
        self.steps += 1
        self.batch_size = max(self.batch_size, int(images.shape[0]))
        # Several epochs revisit the same images: keep each distinct image once.
        for image, label in zip(images, labels, strict=True):
            digest = hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16).digest()
            if digest in self.seen:
                continue
            self.seen.add(digest)
            if len(self.images) < self.max_images:
                self.images.append(image.clone())
                self.labels.append(int(label))


def record_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Record a batch the model consumed (model input space); a no-op unless audit_mod captures."""
    capture = _capture.get()
    if capture is not None:
        capture.add(images, labels)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _positive(context: Context, key: str, default: int) -> int:
    value = context.run_config.get(key, default)
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"run config {key!r} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"run config {key!r} must be an integer >= 1, got {value!r}")
    return number


def _audit_id(msg: Message) -> int | None:
    """The round the server audits this message for; None when it does not audit it."""
    for config in msg.content.config_records.values():
        value = config.get(CAPTURE_KEY)
        if value is None or value is False:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if _flag(value):  # a plain flag: the round the message says
            round_value = config.get("server-round", 0)
            return int(round_value) if isinstance(round_value, int) else 0
    return None


def _labels_asked(msg: Message) -> bool:
    return any(_flag(config.get(LABELS_KEY, False)) for config in msg.content.config_records.values())


# ---------------------------------------------------------------------------------- pending originals


def _keep(context: Context, audit_id: int, capture: _Capture) -> None:
    """Keep a capture's originals in the node's state until scored; drop the oldest beyond the bound."""
    limit = _positive(context, MAX_PENDING_KEY, DEFAULT_MAX_PENDING)
    images, shape = pack_images(torch.stack(capture.images))
    context.state[f"{PENDING_PREFIX}{audit_id}"] = ConfigRecord(
        {"images": images, "shape": shape, "labels": list(capture.labels)})
    kept = sorted(audit_records(context.state, PENDING_PREFIX))
    for old in kept[:max(0, len(kept) - limit)]:
        del context.state[f"{PENDING_PREFIX}{old}"]


def _judge(sha256: str, checkpoint: bytes | None) -> SemSim:
    key = (sha256, "shipped" if checkpoint is None else hashlib.sha256(checkpoint).hexdigest())
    if key not in _judges:
        _judges[key] = load_judge(sha256, checkpoint)
    return _judges[key]


def _answer(audit_id: int, raw_request: Any, context: Context) -> ConfigRecord:
    """Score one request against the kept originals, then drop them; never raises."""
    key = f"{PENDING_PREFIX}{audit_id}"
    try:
        request = decode_request(raw_request)
        if key not in context.state:
            limit = context.run_config.get(MAX_PENDING_KEY, DEFAULT_MAX_PENDING)
            raise ValueError(f"the originals of round {audit_id}'s audit are not kept on this client "
                             f"(it keeps {limit} pending audits, run config {MAX_PENDING_KEY!r}; or its "
                             "state was reset)")
        kept = context.state[key]
        originals = unpack_images(kept["images"], kept["shape"], "kept originals")  # type: ignore[index]
        true_labels = torch.as_tensor(list(kept["labels"]), dtype=torch.long)  # type: ignore[index, arg-type]
        originals = request.spec.denormalize(originals).clamp(0.0, 1.0)
        scores = score_reconstructions(request.reconstructions, originals, true_labels=true_labels,
                                       recovered_labels=request.recovered_labels,
                                       semsim=_judge(request.judge_sha256, request.judge))
        accuracy = None
        if request.recovered_labels is not None:
            accuracy = label_accuracy(true_labels, request.recovered_labels)
        exported = None
        if _flag(context.run_config.get(EXPORT_ORIGINALS_KEY, False)):
            exported = originals[[score.original_index for score in scores]]
        answer = ScoreAnswer(audit_id, "ok", scores=scores, label_accuracy=accuracy, originals=exported)
    except Exception as error:  # the server records the reason; the client's training goes on
        answer = ScoreAnswer(audit_id, "failed", reason=f"scoring on the client failed: "
                                                        f"{type(error).__name__}: {error}")
    if key in context.state:
        del context.state[key]  # scored (or unscorable): the originals are no longer needed
    return encode_answer(answer)


def _answers(requests: dict[int, Any], context: Context) -> dict[str, ConfigRecord]:
    return {f"{ANSWER_PREFIX}{audit_id}": _answer(audit_id, raw, context)
            for audit_id, raw in requests.items()}


# ---------------------------------------------------------------------------------- the mod


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: capture audited training, keep its originals here, score reconstructions here."""
    if not msg.has_content():
        return call_next(msg, context)
    requests = audit_records(msg.content, REQUEST_PREFIX)
    if msg.metadata.message_type == SCORING_MESSAGE_TYPE:
        return Message(RecordDict(_answers(requests, context)), reply_to=msg)
    category = msg.metadata.message_type.split(".")[0]
    if category not in (MessageType.TRAIN, MessageType.EVALUATE):
        return call_next(msg, context)
    for audit_id in requests:  # riding along for a ClientApp without the scoring handler
        del msg.content[f"{REQUEST_PREFIX}{audit_id}"]
    # Score first: this message's own capture may push the requested originals past the bound.
    answers = _answers(requests, context)
    audit_id = _audit_id(msg) if category == MessageType.TRAIN else None
    if audit_id is None:
        reply = call_next(msg, context)
        if category == MessageType.TRAIN and reply.has_content() and not reply.has_error():
            reply.content[KEY_RECORD_KEY] = ConfigRecord({"key": stable_key(context)})
    else:
        try:
            max_images = _positive(context, MAX_IMAGES_KEY, DEFAULT_MAX_IMAGES)
            capture: _Capture | str = _Capture(max_images=max_images)
        except ValueError as error:  # a bad audit setting must not stop the client's training
            capture = str(error)
        token = _capture.set(capture if isinstance(capture, _Capture) else None)
        try:
            reply = call_next(msg, context)
        finally:
            _capture.reset(token)
        if not reply.has_error():
            reply.content[RECORD_KEY] = _record(context, audit_id, capture, _labels_asked(msg))
    if answers and not reply.has_error():
        for key, answer in answers.items():
            reply.content[key] = answer
    return reply


def stable_key(context: Context) -> str:
    """The node's name across runs: its partition id where it has one (simulations), else its node id."""
    partition = context.node_config.get("partition-id")
    return f"partition-{partition}" if partition is not None else f"node-{context.node_id}"


def _record(context: Context, audit_id: int, capture: _Capture | str, send_labels: bool) -> ConfigRecord:
    """The reply's audit record; the originals go into the node's state. A problem is the record's note."""
    key = stable_key(context)
    if isinstance(capture, str):
        return encode_record(AuditRecord(audit_id, 0, 0, 0, 0, scoring_handler.get(), note=capture, key=key))
    note = ""
    if capture.steps == 0:
        note = "the train loop called record_batch on no batch (call it on every batch the model trains on)"
    else:
        try:
            _keep(context, audit_id, capture)
        except ValueError as error:
            return encode_record(AuditRecord(audit_id, capture.steps, capture.batch_size, len(capture.seen),
                                             0, scoring_handler.get(), note=str(error), key=key))
        if len(capture.images) < len(capture.seen):
            note = (f"{len(capture.images)} of {len(capture.seen)} distinct images kept for scoring "
                    f"(run config {MAX_IMAGES_KEY!r})")
    labels = torch.as_tensor(capture.labels, dtype=torch.long) if send_labels else None
    if labels is not None and len(capture.images) < len(capture.seen):
        labels = None  # the attack needs a label per trained image; the capture did not keep them all
        note += "; labels not sent: not all were kept"
    return encode_record(AuditRecord(
        audit_id=audit_id, local_steps=capture.steps, batch_size=capture.batch_size,
        distinct_images=len(capture.seen), kept_images=len(capture.images),
        scoring_handler=scoring_handler.get(), labels=labels, note=note, key=key))
