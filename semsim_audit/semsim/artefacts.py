"""Reconstruction-like image artefacts for the synthetic annotators (:mod:`.proxy`, :mod:`.simulated`).

Small pure functions on (C, H, W) images in [0, 1]. Every random choice is an argument: each
annotator draws its own numbers, in its own order, and passes them in, so one seed gives the
same images whichever artefacts it uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

__all__ = [
    "blur", "add_noise", "shift", "adjust_brightness", "adjust_contrast", "adjust_saturation",
    "scale_channels", "adjust_gamma", "checkerboard", "add_checkerboard", "piecewise_flat", "occlude",
    "shuffle_patches", "blend",
]


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur; the kernel spans three sigmas each side, cut to fit inside the image."""
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(image.shape[-2:]) // 2) - 1)
    return gaussian_blur(image.unsqueeze(0), [kernel, kernel], [sigma, sigma])[0]


def add_noise(image: torch.Tensor, noise: torch.Tensor, scale: float) -> torch.Tensor:
    """``image + scale * noise``, clamped (``noise`` is usually standard normal)."""
    return (image + noise * scale).clamp(0, 1)


def shift(image: torch.Tensor, dy: int, dx: int, margin: int) -> torch.Tensor:
    """Move the content by (dy, dx) pixels, |dy|, |dx| <= ``margin``; uncovered edges repeat the border."""
    height, width = image.shape[-2:]
    padded = F.pad(image.unsqueeze(0), (margin, margin, margin, margin), mode="replicate")[0]
    return padded[:, margin + dy:margin + dy + height, margin + dx:margin + dx + width]


def adjust_brightness(image: torch.Tensor, offset: float) -> torch.Tensor:
    """Add ``offset`` to every pixel (not clamped)."""
    return image + offset


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the distance of every pixel from the image mean by ``factor`` (not clamped)."""
    mean = image.mean()
    return (image - mean) * factor + mean


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the distance of every pixel from its grey (channel mean) by ``factor`` (not clamped)."""
    grey = image.mean(dim=0, keepdim=True)
    return grey + (image - grey) * factor


def scale_channels(image: torch.Tensor, gains: Sequence[float] | np.ndarray) -> torch.Tensor:
    """Multiply each channel by its gain: a colour cast (not clamped)."""
    return image * torch.as_tensor(np.asarray(gains), dtype=torch.float32).view(-1, 1, 1)


def adjust_gamma(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """``image ** gamma`` of the clamped image."""
    return image.clamp(0, 1) ** gamma


def checkerboard(size: int, period: int = 2) -> torch.Tensor:
    """A (size, size) grid of -1 / +1 squares, ``period`` pixels per dark-and-light pair."""
    cells = torch.arange(size).div(period // 2, rounding_mode="floor")
    return ((cells.view(-1, 1) + cells.view(1, -1)) % 2).float() * 2 - 1


def add_checkerboard(image: torch.Tensor, strength: float, period: int = 2,
                     tint: torch.Tensor | None = None) -> torch.Tensor:
    """Add a checkerboard of amplitude ``strength`` (per channel times ``tint``), clamped.

    Transposed convolutions and gradient matching leave such a fixed-period grid over the image.
    """
    pattern = checkerboard(image.shape[-1], period)
    if tint is not None:
        pattern = pattern * tint
    return (image + pattern * strength).clamp(0, 1)


def piecewise_flat(image: torch.Tensor, cells: int) -> torch.Tensor:
    """The image averaged over a ``cells`` x ``cells`` grid, blown up blockwise to its size.

    Total-variation priors flatten regions like this.
    """
    coarse = F.adaptive_avg_pool2d(image.unsqueeze(0), cells)
    return F.interpolate(coarse, size=tuple(image.shape[-2:]), mode="nearest")[0]


def occlude(image: torch.Tensor, top: int, left: int, height: int, width: int,
            fill: torch.Tensor) -> torch.Tensor:
    """A copy with the rectangle filled by ``fill`` ((C, 1, 1) for a flat colour, or (C, height, width))."""
    out = image.clone()
    out[:, top:top + height, left:left + width] = fill
    return out


def shuffle_patches(image: torch.Tensor, patch: int, order: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Cut the square image into ``patch``-pixel tiles, row by row; tile i of the result is tile order[i]."""
    channels, size = image.shape[0], image.shape[-1]
    count = size // patch
    tiles = image.unfold(1, patch, patch).unfold(2, patch, patch)
    tiles = tiles.reshape(channels, count * count, patch, patch)
    tiles = tiles[:, torch.as_tensor(np.asarray(order), dtype=torch.long)]
    grid = tiles.reshape(channels, count, count, patch, patch).permute(0, 1, 3, 2, 4)
    return grid.reshape(channels, size, size)


def blend(image: torch.Tensor, other: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 - weight) * image + weight * other``."""
    return image * (1 - weight) + other * weight
