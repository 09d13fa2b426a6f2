"""Gradient-matching objectives and image priors over a batch of trials (leading dimension T).

Every function returns one value per trial (T,): the engine sums them for one backward pass, and
each trial's gradient stays its own because trials share no variables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["gradient_distance", "total_variation", "l2_prior", "batchnorm_prior"]

# Keeps the square roots of the cosine objective differentiable when a gradient is all zeros.
_NORM_FLOOR = 1e-30


def _per_trial_sum(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1).sum(1)


def gradient_distance(produced: dict[str, torch.Tensor], observed: dict[str, torch.Tensor],
                      layer_weights: Sequence[float], objective: str,
                      support_only: bool = False) -> torch.Tensor:
    """Distance (T,) between each trial's gradient (or update) and the observed one, over all layers.

    Tensors are (T, *parameter shape). ``l2``: weighted sum of squared differences (DLG).
    ``cosine``: 1 - cosine similarity of the layer-weighted concatenation of all layers (Inverting
    Gradients). ``support_only``: the produced gradient is compared on the observed one's non-zero
    coordinates alone (a pruned update's zeros say what was dropped, not what the gradient was).
    """
    names = list(observed)
    if support_only:
        produced = {n: produced[n] * (observed[n] != 0) for n in names}
    pairs = [(produced[n], observed[n], w) for n, w in zip(names, layer_weights, strict=True)]
    if objective == "l2":
        return sum(w * _per_trial_sum((p - o).pow(2)) for p, o, w in pairs)
    if objective == "cosine":
        dot = sum(w * _per_trial_sum(p * o) for p, o, w in pairs)
        produced_sq = sum(w * _per_trial_sum(p.pow(2)) for p, _, w in pairs)
        observed_sq = sum(w * _per_trial_sum(o.pow(2)) for _, o, w in pairs)
        return 1.0 - dot / ((produced_sq + _NORM_FLOOR).sqrt() * (observed_sq + _NORM_FLOOR).sqrt())
    raise ValueError(f"unknown objective {objective!r}; use 'l2' or 'cosine'")


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, both directions, of (T, B, C, H, W) images: (T,)."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    return vertical + horizontal


def l2_prior(images: torch.Tensor) -> torch.Tensor:
    """Mean squared value of each trial's (normalised) images: keeps pixels near the data mean. (T,)"""
    return images.pow(2).flatten(1).mean(1)


def batchnorm_prior(batch_stats: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    running_stats: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """GradInversion's prior: distance of each BatchNorm input's batch mean/var to the running ones.

    Every statistic is (T, channels); the result is (T,).
    """
    return sum((mean - running_mean).norm(dim=-1) + (var - running_var).norm(dim=-1)
               for (mean, var), (running_mean, running_var) in zip(batch_stats, running_stats, strict=True))
