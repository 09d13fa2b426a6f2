"""The :class:`SemSim` scorer: a loaded checkpoint that compares originals with reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semsim_audit.core import select_device
from semsim_audit.semsim.checkpoint import CheckpointMetadata, load_checkpoint
from semsim_audit.semsim.model import SemSimNet

__all__ = ["SemSim", "DEFAULT_CHECKPOINT", "PROXY_V1_CHECKPOINT", "PROXY_V2_CHECKPOINT",
           "PROXY_V3_CHECKPOINT"]

_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
# The layout-and-sharpness stats head on the stem and first two stages, trained on the proxy mix with real
# attack outputs (semsim_audit.semsim.default_checkpoint).
DEFAULT_CHECKPOINT = _CHECKPOINTS / "semsim-proxy-v4.safetensors"
# The defaults before it, kept to compare against and to load: the same head on all four stages (v3), the
# plain stats head on the same kind of mix (v2), and the released recipe on proxy annotations (v1).
PROXY_V3_CHECKPOINT = _CHECKPOINTS / "semsim-proxy-v3.safetensors"
PROXY_V2_CHECKPOINT = _CHECKPOINTS / "semsim-proxy-v2.safetensors"
PROXY_V1_CHECKPOINT = _CHECKPOINTS / "semsim-proxy.safetensors"


class SemSim:
    """Human-aligned semantic distance between images; lower = more similar = more leakage.

    Distances are L2 distances between L2-normalised embeddings, so they lie in [0, 2] and the
    calibrated threshold means the same thing for every checkpoint.
    """

    def __init__(self, model: SemSimNet, metadata: CheckpointMetadata, *, device: str | torch.device = "auto",
                 batch_size: int = 256, path: str | Path | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        self.metadata = metadata
        self.batch_size = batch_size
        self.path = Path(path) if path is not None else None

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str | torch.device = "auto",
             batch_size: int = 256) -> SemSim:
        """Load a checkpoint file; without ``path``, the default checkpoint shipped in the package."""
        path = DEFAULT_CHECKPOINT if path is None else Path(path)
        model, metadata = load_checkpoint(path)
        return cls(model, metadata, device=device, batch_size=batch_size, path=path)

    @property
    def threshold(self) -> float:
        """Distances at or below this are judged recognizable (calibrated on validation identities)."""
        return self.metadata.threshold

    @property
    def borderline_band(self) -> tuple[float, float] | None:
        """Distances in ``[low, high]`` are borderline calls; None for checkpoints without a band."""
        return self.metadata.borderline_band

    @property
    def calibration(self) -> dict[str, Any]:
        """What the threshold was calibrated on and its balanced accuracy there.

        Checkpoints older than the ``calibration`` field say it in their training summary.
        """
        if self.metadata.calibration:
            return dict(self.metadata.calibration)
        training = self.metadata.training
        if "calibrated_on" not in training:
            return {}
        return {"set": f"{training['calibrated_on']} identities",
                "balanced_accuracy": training.get("balanced_accuracy")}

    @property
    def info(self) -> dict[str, Any]:
        """Provenance for reports: annotator kind, threshold, calibration, borderline band, data, version,
        width, head, sha256, file."""
        meta = self.metadata
        return {
            "annotator": meta.annotator, "threshold": meta.threshold, "data": meta.data,
            "calibration": self.calibration,
            "borderline_band": list(meta.borderline_band) if meta.borderline_band is not None else None,
            "version": meta.version, "architecture": meta.architecture, "width": meta.width,
            "head": meta.head, "embedding": meta.embedding, "sha256": meta.sha256,
            "checkpoint": self.path.name if self.path is not None else None,
            "default": self.path is not None and self.path.resolve() == DEFAULT_CHECKPOINT,
        }

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (N, D) on the CPU of [0, 1] images (N, C, H, W), C = 1 or 3."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {shape}")
        chunks = [self.model(images[start:start + self.batch_size].to(self.device)).float().cpu()
                  for start in range(0, images.shape[0], self.batch_size)]
        return torch.cat(chunks)

    def distance(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """Per-pair SemSim distance (N,): pair i is (originals[i], reconstructions[i])."""
        _check_pairs(originals, reconstructions)
        return (self.embed(originals) - self.embed(reconstructions)).norm(dim=1)

    def pairwise(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """All-pairs SemSim distances (M, N): row = original, column = reconstruction."""
        return torch.cdist(self.embed(originals), self.embed(reconstructions))

    def recognizable(self, originals: torch.Tensor, reconstructions: torch.Tensor,
                     threshold: float | None = None) -> torch.Tensor:
        """Per-pair bool (N,): would a person recognise the original in the reconstruction?"""
        limit = self.threshold if threshold is None else float(threshold)
        return self.distance(originals, reconstructions) <= limit

    def borderline(self, distances: torch.Tensor) -> torch.Tensor | None:
        """Per distance: inside the borderline band? None when the checkpoint has no band."""
        band = self.borderline_band
        if band is None:
            return None
        return (distances >= band[0]) & (distances <= band[1])

    def __repr__(self) -> str:
        meta = self.metadata
        return (f"SemSim(annotator={meta.annotator!r}, width={meta.width}, threshold={meta.threshold:.4f}, "
                f"device={self.device}, sha256={meta.sha256[:12]})")


def _check_pairs(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    for name, images in (("originals", originals), ("reconstructions", reconstructions)):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name} must be an (N, C, H, W) tensor, got {shape}")
    if originals.shape[0] != reconstructions.shape[0]:
        raise ValueError(f"originals and reconstructions must pair up: {originals.shape[0]} vs "
                         f"{reconstructions.shape[0]} images")
