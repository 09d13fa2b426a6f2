"""Device selection, seeding and image normalisation: the one helper for each."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["select_device", "seed_everything", "normalize", "denormalize"]


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """Resolve ``"auto"`` (CUDA when available, else CPU) or an explicit device name.

    Raises ValueError for a name torch does not know, or for CUDA asked on a machine without it.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _channel_view(values: Sequence[float], images: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=images.dtype, device=images.device)
    return tensor.view(1, -1, 1, 1) if images.dim() == 4 else tensor.view(-1, 1, 1)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Map [0, 1] images ((C,H,W) or (N,C,H,W)) to the model's input space: (x - mean) / std."""
    return (images - _channel_view(mean, images)) / _channel_view(std, images)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`: model input space back to [0, 1] pixel space (not clamped)."""
    return images * _channel_view(std, images) + _channel_view(mean, images)
