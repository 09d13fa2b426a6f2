"""Client side of the audit: the ``audit_mod`` Flower mod and ``record_batch`` for train loops.

The server marks the train messages of the clients it audits with ``audit.capture`` in their
config. For those messages ``audit_mod`` opens a capture; the train loop calls
:func:`record_batch` on every batch the model consumes (a no-op otherwise); after training, the
mod attaches the distinct images seen, their labels, the observed local step count and batch
size to the reply as a ConfigRecord under ``audit.record``. Originals leave the client only when
the run config allows it (``audit-export-originals``; ``run_audited_simulation`` turns it on).

Put ``audit_mod`` FIRST in ``ClientApp(mods=[...])``: the first mod is the outermost, so its
record is added after every defense mod has transformed the update, and those mods (e.g.
Flower's ``fixedclipping_mod``, which insists on exactly one ArrayRecord) see a plain reply.
What the server attacks is the update the client sends either way: the audit record carries no
weights, only what scoring needs.
"""

from __future__ import annotations

import hashlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

__all__ = [
    "audit_mod", "record_batch", "CAPTURE_KEY", "RECORD_KEY", "EXPORT_ORIGINALS_KEY",
    "MAX_IMAGES_KEY", "encode_record", "decode_record", "AuditRecord",
]

CAPTURE_KEY = "audit.capture"
RECORD_KEY = "audit.record"
EXPORT_ORIGINALS_KEY = "audit-export-originals"
MAX_IMAGES_KEY = "audit-max-images"
DEFAULT_MAX_IMAGES = 256

_log = logging.getLogger("semsim_audit")
_capture: ContextVar[_Capture | None] = ContextVar("semsim_audit_capture", default=None)
_refusal_logged = False


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
            if digest in self.seen or len(self.images) >= self.max_images:
                continue
            self.seen.add(digest)
            self.images.append(image.clone())
            self.labels.append(int(label))


def record_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Record a batch the model consumed (model input space); a no-op unless audit_mod captures."""
    capture = _capture.get()
    if capture is not None:
        capture.add(images, labels)


@dataclass
class AuditRecord:
    """The decoded ``audit.record`` of a reply: scoring-side data, never given to an attack."""

    exported: bool
    local_steps: int
    batch_size: int
    images: torch.Tensor | None = None  # (N, C, H, W) in the model's input space
    labels: torch.Tensor | None = None
    note: str = ""


def encode_record(capture: _Capture, export: bool, note: str = "") -> ConfigRecord:
    """Pack a capture into a ConfigRecord (bytes + shape): strategies that touch only
    ArrayRecords and MetricRecords (FedAvg's checks, Flower's DP wrappers) leave it alone."""
    record: dict[str, Any] = {
        "exported": export, "local-steps": capture.steps, "batch-size": capture.batch_size,
        "note": note,
    }
    if export and capture.images:
        stacked = torch.stack(capture.images).contiguous()
        record["images"] = stacked.numpy().astype("<f4").tobytes()
        record["shape"] = [int(s) for s in stacked.shape]
        record["labels"] = list(capture.labels)
    return ConfigRecord(record)


def decode_record(record: Any) -> AuditRecord:
    """Unpack an ``audit.record``; raises ValueError saying what is malformed."""
    if not isinstance(record, ConfigRecord):
        raise ValueError(f"audit record is a {type(record).__name__}, expected a ConfigRecord")
    try:
        exported = bool(record["exported"])
        steps, batch = int(record["local-steps"]), int(record["batch-size"])  # type: ignore[arg-type]
    except KeyError as error:
        raise ValueError(f"audit record lacks {error.args[0]!r}") from None
    note = str(record.get("note", ""))
    if not exported or "images" not in record:
        return AuditRecord(exported, steps, batch, note=note or "the client exported no images")
    shape = [int(s) for s in record["shape"]]  # type: ignore[union-attr]
    raw = record["images"]
    if len(shape) != 4 or not isinstance(raw, bytes) or len(raw) != 4 * int(np.prod(shape)):
        raise ValueError(f"audit record images do not fit their shape {shape}")
    images = torch.from_numpy(np.frombuffer(raw, dtype="<f4").reshape(shape).copy())
    labels = torch.as_tensor(list(record["labels"]), dtype=torch.long)  # type: ignore[arg-type]
    if labels.shape[0] != shape[0]:
        raise ValueError(f"audit record has {shape[0]} images but {labels.shape[0]} labels")
    return AuditRecord(exported, steps, batch, images, labels, note)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _capture_requested(msg: Message) -> bool:
    return any(_flag(config.get(CAPTURE_KEY, False)) for config in msg.content.config_records.values())


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: on train messages the server audits, capture what the train loop consumed."""
    global _refusal_logged
    category = msg.metadata.message_type.split(".")[0]
    if category != MessageType.TRAIN or not msg.has_content() or not _capture_requested(msg):
        return call_next(msg, context)
    export = _flag(context.run_config.get(EXPORT_ORIGINALS_KEY, False))
    max_images = int(context.run_config.get(MAX_IMAGES_KEY, DEFAULT_MAX_IMAGES))  # type: ignore[arg-type]
    capture = _Capture(max_images=max_images)
    token = _capture.set(capture)
    try:
        reply = call_next(msg, context)
    finally:
        _capture.reset(token)
    if reply.has_error():
        return reply
    note = ""
    if not export:
        note = (f"originals not exported: run config {EXPORT_ORIGINALS_KEY!r} is off "
                "(on by default only in run_audited_simulation)")
        if not _refusal_logged:
            _refusal_logged = True
            _log.warning("audit_mod: %s; the server cannot score this client's leakage", note)
    elif capture.steps == 0:
        note = "the train loop called record_batch on no batch"
    reply.content[RECORD_KEY] = encode_record(capture, export, note)
    return reply
