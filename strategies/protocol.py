"""What the audit adds to Flower messages: record keys, and the codecs of its three records.

Every record is a ``ConfigRecord`` (scalars, lists and bytes), so strategies that handle only
ArrayRecords and MetricRecords (FedAvg's checks, Flower's DP wrappers) never trip over it, and
every key starts with ``audit.``. One audited round, for one client::

    server -> client   train message, config["audit.capture"] = round    (which clients: AuditConfig)
    client -> server   train reply + "audit.record": steps, batch size, image count; numbers only
    (the server attacks the update)
    server -> client   "audit.score.<round>": the reconstructions, the data's normalisation, the judge
    client -> server   "audit.scores.<round>": SemSim, PSNR, SSIM, labels, identifiability per pair;
                       numbers only (plus the paired originals if the client opted in to export them)

The request travels in a ``query.semsim_audit`` message when the ClientApp registers the scoring
handler (:class:`semsim_audit.strategies.AuditedClientApp`), otherwise on the next train or evaluate
message the node handles: Flower routes a message by its registered type before any mod runs.
Decoders raise ValueError naming what is malformed; the server turns that into the audit's reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, MessageType, RecordDict
from pydantic import ValidationError

from semsim_audit.core import DataSpec
from semsim_audit.report import ReconstructionScore

__all__ = [
    "CAPTURE_KEY", "LABELS_KEY", "RECORD_KEY", "REQUEST_PREFIX", "ANSWER_PREFIX", "SCORING_ACTION",
    "SCORING_MESSAGE_TYPE", "EXPORT_ORIGINALS_KEY", "MAX_IMAGES_KEY", "MAX_PENDING_KEY", "AuditRecord",
    "ScoreRequest", "ScoreAnswer", "encode_record", "decode_record", "encode_request", "decode_request",
    "encode_answer", "decode_answer", "audit_records", "pack_images", "unpack_images",
]

CAPTURE_KEY = "audit.capture"
LABELS_KEY = "audit.send-labels"
RECORD_KEY = "audit.record"
# On a train reply that carries no audit record: the client's stable key alone, so the server can
# order every round's replies (run_audited_simulation's reply_order="stable-key"), audited or not.
KEY_RECORD_KEY = "audit.key"
REQUEST_PREFIX = "audit.score."
ANSWER_PREFIX = "audit.scores."
SCORING_ACTION = "semsim_audit"
SCORING_MESSAGE_TYPE = f"{MessageType.QUERY}.{SCORING_ACTION}"
# Client-side run-config keys (read by audit_mod).
EXPORT_ORIGINALS_KEY = "audit-export-originals"
MAX_IMAGES_KEY = "audit-max-images"
MAX_PENDING_KEY = "audit-max-pending"


def audit_records(content: RecordDict, prefix: str) -> dict[int, Any]:
    """The records of ``content`` under ``prefix`` + round, by round (other keys are left alone)."""
    found: dict[int, Any] = {}
    for key in list(content.keys()):
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            found[int(key[len(prefix):])] = content[key]
    return found


def pack_images(images: torch.Tensor) -> tuple[bytes, list[int]]:
    """(little-endian float32 bytes, shape) of an image batch."""
    images = images.detach().to("cpu", torch.float32).contiguous()
    return images.numpy().astype("<f4").tobytes(), [int(s) for s in images.shape]


def unpack_images(raw: Any, shape: Any, what: str) -> torch.Tensor:
    """The (N, C, H, W) float32 batch packed by :func:`pack_images`; ValueError when it does not fit."""
    if not isinstance(raw, bytes) or not isinstance(shape, list) or len(shape) != 4:
        raise ValueError(f"{what}: expected bytes and a 4-entry shape")
    dims = [int(s) for s in shape]
    if min(dims) < 1 or len(raw) != 4 * int(np.prod(dims)):
        raise ValueError(f"{what} do not fit their shape {dims}")
    images = torch.from_numpy(np.frombuffer(raw, dtype="<f4").reshape(dims).copy())
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} contain NaN or inf")
    return images


def _get(record: ConfigRecord, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in record:
        raise ValueError(f"{what} lacks {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{what}: {key!r} is a {type(value).__name__}")
    return value


def _config(record: Any, what: str) -> ConfigRecord:
    if not isinstance(record, ConfigRecord):
        raise ValueError(f"{what} is a {type(record).__name__}, expected a ConfigRecord")
    return record


# ---------------------------------------------------------------------------------- audit record


@dataclass
class AuditRecord:
    """What an audited client says about its training: numbers, never pixels.

    ``labels`` are there only when the server's threat model gives the attacker the labels
    (``labels_known``) and asked for them.
    """

    audit_id: int
    local_steps: int
    batch_size: int
    distinct_images: int  # distinct images the model trained on
    kept_images: int  # of those, kept on the client for scoring (audit-max-images)
    scoring_handler: bool  # the ClientApp answers query.semsim_audit (AuditedClientApp)
    labels: torch.Tensor | None = None
    note: str = ""
    # What the node is called across runs (its partition id in a simulation, else its node id):
    # random node ids must not decide which client is audited.
    key: str = ""


def encode_record(record: AuditRecord) -> ConfigRecord:
    """Pack an :class:`AuditRecord` for the train reply."""
    fields: dict[str, Any] = {
        "audit-id": record.audit_id, "local-steps": record.local_steps, "batch-size": record.batch_size,
        "distinct-images": record.distinct_images, "kept-images": record.kept_images,
        "scoring-handler": record.scoring_handler, "note": record.note, "key": record.key,
    }
    if record.labels is not None:
        fields["labels"] = [int(label) for label in record.labels.tolist()]
    return ConfigRecord(fields)


def decode_record(raw: Any) -> AuditRecord:
    """Unpack an ``audit.record``; raises ValueError saying what is malformed."""
    record = _config(raw, "audit record")
    what = "audit record"
    labels = None
    if "labels" in record:
        labels = torch.as_tensor(list(_get(record, "labels", list, what)), dtype=torch.long)
    decoded = AuditRecord(
        audit_id=_get(record, "audit-id", int, what), local_steps=_get(record, "local-steps", int, what),
        batch_size=_get(record, "batch-size", int, what),
        distinct_images=_get(record, "distinct-images", int, what),
        kept_images=_get(record, "kept-images", int, what),
        scoring_handler=bool(_get(record, "scoring-handler", bool, what)), labels=labels,
        note=str(record.get("note", "")), key=str(record.get("key", "")))
    if min(decoded.local_steps, decoded.batch_size, decoded.distinct_images, decoded.kept_images) < 0:
        raise ValueError("audit record has a negative count")
    if labels is not None and labels.shape[0] != decoded.distinct_images:
        raise ValueError(f"audit record has {decoded.distinct_images} images but {labels.shape[0]} labels")
    return decoded


# ---------------------------------------------------------------------------------- score request


@dataclass
class ScoreRequest:
    """The server's reconstructions of one audited round, for the client to score."""

    audit_id: int
    reconstructions: torch.Tensor  # (N, C, H, W) in [0, 1]
    recovered_labels: torch.Tensor | None
    spec: DataSpec  # public: the client's originals are in the model's input space
    judge_sha256: str
    judge: bytes | None = None  # the SemSim checkpoint, unless it is the one shipped in the package


def encode_request(request: ScoreRequest) -> ConfigRecord:
    """Pack a :class:`ScoreRequest`."""
    images, shape = pack_images(request.reconstructions)
    fields: dict[str, Any] = {
        "audit-id": request.audit_id, "reconstructions": images, "shape": shape,
        "spec": json.dumps(request.spec.to_dict()), "judge-sha256": request.judge_sha256,
    }
    if request.recovered_labels is not None:
        fields["recovered-labels"] = [int(label) for label in request.recovered_labels.reshape(-1).tolist()]
    if request.judge is not None:
        fields["judge"] = request.judge
    return ConfigRecord(fields)


def decode_request(raw: Any) -> ScoreRequest:
    """Unpack an ``audit.score.<round>`` record; raises ValueError saying what is malformed."""
    record = _config(raw, "scoring request")
    what = "scoring request"
    reconstructions = unpack_images(record.get("reconstructions"), record.get("shape"),
                                    "the scoring request's reconstructions")
    try:
        spec = DataSpec.from_dict(json.loads(_get(record, "spec", str, what)))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"scoring request: unreadable data spec ({error})") from None
    labels = None
    if "recovered-labels" in record:
        labels = torch.as_tensor(list(_get(record, "recovered-labels", list, what)), dtype=torch.long)
    judge = record.get("judge")
    if judge is not None and not isinstance(judge, bytes):
        raise ValueError("scoring request: 'judge' is not bytes")
    return ScoreRequest(audit_id=_get(record, "audit-id", int, what), reconstructions=reconstructions,
                        recovered_labels=labels, spec=spec, judge=judge,
                        judge_sha256=_get(record, "judge-sha256", str, what))


# ---------------------------------------------------------------------------------- score answer


@dataclass
class ScoreAnswer:
    """The client's scores of one audited round: numbers only, unless it exports the originals."""

    audit_id: int
    status: str  # "ok" or "failed"
    reason: str = ""
    scores: list[ReconstructionScore] | None = None
    label_accuracy: float | None = None
    originals: torch.Tensor | None = None  # the paired originals in [0, 1], in score order (opt-in)


def encode_answer(answer: ScoreAnswer) -> ConfigRecord:
    """Pack a :class:`ScoreAnswer`; scores travel as JSON (numbers, booleans and indices)."""
    scores = [score.model_dump(exclude={"original_image", "reconstruction_image"})
              for score in answer.scores or []]
    fields: dict[str, Any] = {
        "audit-id": answer.audit_id, "status": answer.status, "reason": answer.reason,
        "scores": json.dumps(scores, allow_nan=False),
        "label-accuracy": float("nan") if answer.label_accuracy is None else float(answer.label_accuracy),
    }
    if answer.originals is not None:
        fields["originals"], fields["originals-shape"] = pack_images(answer.originals)
    return ConfigRecord(fields)


def decode_answer(raw: Any, num_reconstructions: int) -> ScoreAnswer:
    """Unpack an ``audit.scores.<round>`` record, checking it against the request it answers."""
    record = _config(raw, "scoring answer")
    what = "scoring answer"
    status = _get(record, "status", str, what)
    if status not in ("ok", "failed"):
        raise ValueError(f"scoring answer: unknown status {status!r}")
    audit_id = _get(record, "audit-id", int, what)
    if status == "failed":
        return ScoreAnswer(audit_id, status, reason=str(record.get("reason", "")) or "no reason given")
    try:
        entries = json.loads(_get(record, "scores", str, what))
        if not isinstance(entries, list) or not entries:
            raise ValueError("not a non-empty list")
        scores = [ReconstructionScore.model_validate(entry) for entry in entries]
    except (ValueError, ValidationError) as error:
        raise ValueError(f"scoring answer: unreadable scores ({str(error).splitlines()[0]})") from None
    used = [s.reconstruction_index for s in scores]
    fits = all(index is not None and 0 <= index < num_reconstructions for index in used)
    if not fits or len(set(used)) < len(used):
        raise ValueError(f"scoring answer: reconstruction indices {used} do not fit the "
                         f"{num_reconstructions} reconstructions sent")
    accuracy = _get(record, "label-accuracy", float, what)
    if math.isfinite(accuracy) and not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"scoring answer: label accuracy {accuracy} outside [0, 1]")
    originals = None
    if "originals" in record:
        originals = unpack_images(record["originals"], record.get("originals-shape"), "exported originals")
        if originals.shape[0] != len(scores):
            raise ValueError(f"scoring answer: {originals.shape[0]} exported originals for "
                             f"{len(scores)} scores")
    return ScoreAnswer(audit_id, "ok", scores=scores,
                       label_accuracy=accuracy if math.isfinite(accuracy) else None, originals=originals)
