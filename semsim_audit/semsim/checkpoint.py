"""SemSim checkpoints: one safetensors file whose header carries the JSON metadata.

Loading never unpickles. The metadata records what the weights are (architecture, width,
normalisation, head), how to use them (threshold), where they came from (annotator kind ``human`` or
``proxy``, data description) and the SHA-256 of the weights, which is checked on every load, so a
file that is corrupt, truncated or built for another architecture is refused with a ValueError
that says what is wrong.

Fields added without a format version change (a checkpoint written before them lacks them and loads
unchanged; an older reader ignores them):

* ``head``: ``"none"`` for the released model, whose pooled feature is the embedding, ``"stats"`` for
  the projection head on feature statistics, ``"stats-layout"`` for that head on statistics that also
  see layout and sharpness, or ``"stats-early"`` for the latter on the stem and first two stages only
  (:class:`~semsim_audit.semsim.model.SemSimNet`); absent means ``"none"``.
* ``calibration``: what the threshold was calibrated on (``set``, ``identities``, ``pairs``) and the
  balanced accuracy it reached there (``balanced_accuracy``).
* ``borderline_band``: ``[low, high]`` around the threshold, calibrated on the same pairs: outside it at
  least 90 % of the calibration pairs at that distance agree with the verdict
  (:func:`~semsim_audit.semsim.calibration.borderline_band`); a distance inside it is a borderline call.
  Absent: no band, and borderline counts are unknown.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.torch import load, save

from semsim_audit.semsim.model import ARCHITECTURE, INPUT_SIZE, NORMALISATION, Head, SemSimNet

__all__ = [
    "CHECKPOINT_FORMAT", "FORMAT_VERSION", "CheckpointMetadata", "weights_sha256",
    "write_safetensors", "read_safetensors", "save_checkpoint", "load_checkpoint",
]

CHECKPOINT_FORMAT = "semsim-audit/semsim"
FORMAT_VERSION = 1
_METADATA_KEY = "semsim"
# A header larger than this is not a SemSim checkpoint (ours are a few kB); refuse before reading it.
_MAX_HEADER_BYTES = 16 * 1024 * 1024


class CheckpointMetadata(BaseModel):
    """What a checkpoint's weights are, how to score with them, and where they came from."""

    model_config = ConfigDict(extra="ignore")

    format: Literal["semsim-audit/semsim"] = CHECKPOINT_FORMAT
    version: int = FORMAT_VERSION
    architecture: str = ARCHITECTURE
    width: int = Field(64, ge=1)
    # Absent in checkpoints from before the stats head: they are the released model, "none".
    head: Head = "none"
    embedding_dim: int = Field(512, ge=1)
    input_size: int = INPUT_SIZE
    normalisation: dict[str, list[float]] = Field(default_factory=lambda: dict(NORMALISATION))
    embedding: Literal["l2-normalised"] = "l2-normalised"
    threshold: float
    annotator: Literal["human", "proxy"]
    data: str
    sha256: str = ""
    dtype: str = "float32"
    training: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    borderline_band: tuple[float, float] | None = None

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be a finite, non-negative distance")
        return value

    @model_validator(mode="after")
    def _band_around_threshold(self) -> CheckpointMetadata:
        if self.borderline_band is not None:
            low, high = self.borderline_band
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= self.threshold <= high):
                raise ValueError(f"borderline_band {list(self.borderline_band)} must be finite and hold the "
                                 f"threshold {self.threshold}")
        return self


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write tensors + JSON metadata atomically (temporary file, fsync, rename): no half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                   metadata={_METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_safetensors(path: str | Path,
                     what: str = "SemSim checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors + JSON metadata written by :func:`write_safetensors`, refusing damaged files."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    blob = path.read_bytes()
    if len(blob) < 8:
        raise ValueError(f"{what} {path} is truncated: {len(blob)} bytes, not even a safetensors header")
    (header_size,) = struct.unpack("<Q", blob[:8])
    if header_size > _MAX_HEADER_BYTES:
        raise ValueError(f"{what} {path} is not a safetensors file (header length {header_size} bytes)")
    if 8 + header_size > len(blob):
        raise ValueError(f"{what} {path} is truncated: header needs {header_size} bytes, "
                         f"file has {len(blob) - 8}")
    try:
        header = json.loads(blob[8:8 + header_size])
        metadata = json.loads(header["__metadata__"][_METADATA_KEY])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {path} is corrupt: unreadable header ({error})") from None
    except (KeyError, TypeError):
        raise ValueError(f"{what} {path} is not a SemSim file: its header has no "
                         f"'{_METADATA_KEY}' metadata") from None
    try:
        tensors = load(blob)
    except SafetensorError as error:
        raise ValueError(f"{what} {path} is corrupt or truncated: {error}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{what} {path} is corrupt: metadata is not a JSON object")
    return tensors, metadata


def save_checkpoint(path: str | Path, model: SemSimNet, *, threshold: float, annotator: str, data: str,
                    training: dict[str, Any] | None = None, calibration: dict[str, Any] | None = None,
                    borderline_band: tuple[float, float] | None = None,
                    dtype: torch.dtype = torch.float32) -> CheckpointMetadata:
    """Save ``model`` with its provenance; float tensors are stored as ``dtype`` (fp16 halves the file)."""
    tensors = {name: (t.to(dtype) if t.is_floating_point() else t)
               for name, t in model.state_dict().items()}
    try:
        metadata = CheckpointMetadata(width=model.width, head=model.head_kind,  # type: ignore[arg-type]
                                      embedding_dim=model.embedding_dim,
                                      threshold=threshold, annotator=annotator, data=data,  # type: ignore[arg-type]
                                      sha256=weights_sha256(tensors), dtype=str(dtype).removeprefix("torch."),
                                      training=training or {}, calibration=calibration or {},
                                      borderline_band=borderline_band)
    except ValidationError as error:
        raise ValueError(f"cannot save SemSim checkpoint: {_first_error(error)}") from None
    write_safetensors(path, tensors, metadata.model_dump(mode="json"))
    return metadata


def load_checkpoint(path: str | Path) -> tuple[SemSimNet, CheckpointMetadata]:
    """Load and check a checkpoint; return the model (float32, eval mode) and its metadata."""
    tensors, raw = read_safetensors(path)
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"SemSim checkpoint {path}: format {raw.get('format')!r} is not "
                         f"{CHECKPOINT_FORMAT!r}")
    if raw.get("version") != FORMAT_VERSION:
        raise ValueError(f"SemSim checkpoint {path}: format version {raw.get('version')!r} is not supported "
                         f"(this version reads {FORMAT_VERSION})")
    if raw.get("architecture") != ARCHITECTURE:
        raise ValueError(f"SemSim checkpoint {path}: architecture {raw.get('architecture')!r} is not "
                         f"supported (expected {ARCHITECTURE!r})")
    try:
        metadata = CheckpointMetadata.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"SemSim checkpoint {path}: bad metadata: {_first_error(error)}") from None
    if metadata.input_size != INPUT_SIZE or metadata.normalisation != NORMALISATION:
        raise ValueError(f"SemSim checkpoint {path}: input size {metadata.input_size} / normalisation "
                         f"{metadata.normalisation} differ from this model's {INPUT_SIZE} / {NORMALISATION}")
    if weights_sha256(tensors) != metadata.sha256:
        raise ValueError(f"SemSim checkpoint {path}: weights do not match the recorded sha256 "
                         f"(the file is corrupt or was edited)")
    model = SemSimNet(width=metadata.width, head=metadata.head)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or misshapen:
        raise ValueError(
            f"SemSim checkpoint {path}: weights do not fit {ARCHITECTURE} width {metadata.width} "
            f"head {metadata.head!r}: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}, wrong shape {_few(misshapen)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    if metadata.embedding_dim != model.embedding_dim:
        raise ValueError(f"SemSim checkpoint {path}: embedding_dim {metadata.embedding_dim} does not match "
                         f"width {metadata.width} head {metadata.head!r} (expected {model.embedding_dim})")
    return model.eval(), metadata


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return f"[{shown}{', ...' if len(names) > 3 else ''}] ({len(names)})" if names else "none"


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "metadata"
    return f"{field}: {first['msg']}"
