"""Image helpers every layer shares: resizing and writing PNGs."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["resize", "save_png"]


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of (C, H, W) or (N, C, H, W) images to ``size`` x ``size``, in [0, 1]."""
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False).clamp(0.0, 1.0)
    return resized if images.dim() == 4 else resized[0]


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a (C, H, W) image in [0, 1] as an 8-bit PNG: grey for one channel, RGB for three.

    Values are clamped to [0, 1] and rounded to the nearest of the 256 levels (halves to even, as
    ``torch.round``); the folder is created when missing.
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_png needs a (1 or 3, H, W) image, got shape {tuple(image.shape)}")
    levels = image.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    array = levels.permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array if array.shape[2] == 3 else array[..., 0]).save(path)
