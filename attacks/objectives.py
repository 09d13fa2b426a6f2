"""Gradient-matching objectives and image priors, written for one trial (vmapped by the engine)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["gradient_distance", "total_variation", "l2_prior", "batchnorm_prior"]

# Keeps the square roots of the cosine objective differentiable when a gradient is all zeros.
_NORM_FLOOR = 1e-30


def gradient_distance(produced: dict[str, torch.Tensor], observed: dict[str, torch.Tensor],
                      layer_weights: Sequence[float], objective: str) -> torch.Tensor:
    """Distance between the candidate's gradient (or update) and the observed one, over all layers.

    ``l2``: weighted sum of squared differences (DLG). ``cosine``: 1 - cosine similarity of the
    layer-weighted concatenation of all layers (Inverting Gradients).
    """
    names = list(observed)
    if objective == "l2":
        return sum(w * (produced[n] - observed[n]).pow(2).sum()
                   for n, w in zip(names, layer_weights, strict=True))
    if objective == "cosine":
        dot = sum(w * (produced[n] * observed[n]).sum() for n, w in zip(names, layer_weights, strict=True))
        produced_sq = sum(w * produced[n].pow(2).sum() for n, w in zip(names, layer_weights, strict=True))
        observed_sq = sum(w * observed[n].pow(2).sum() for n, w in zip(names, layer_weights, strict=True))
        return 1.0 - dot / ((produced_sq + _NORM_FLOOR).sqrt() * (observed_sq + _NORM_FLOOR).sqrt())
    raise ValueError(f"unknown objective {objective!r}; use 'l2' or 'cosine'")


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (both directions) of (B, C, H, W) images."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return vertical + horizontal


def l2_prior(images: torch.Tensor) -> torch.Tensor:
    """Mean squared value of the (normalised) images: keeps pixels near the data mean."""
    return images.pow(2).mean()


def batchnorm_prior(batch_stats: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    running_stats: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """GradInversion's prior: distance of each BatchNorm input's batch mean/var to the running ones."""
    return sum((mean - running_mean).norm() + (var - running_var).norm()
               for (mean, var), (running_mean, running_var) in zip(batch_stats, running_stats, strict=True))
