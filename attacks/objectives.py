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
# Parameters per trial from which the layers are reduced one by one instead of as one concatenated
# row. The row costs a copy of every gradient and full-size temporaries. Measured on a 2-core CPU
# (objective and its backward): ResNet-18's 11M parameters take 2.4-3.6x as long as one row as layer by
# layer, at 1 or 2 trials; a ConvNet of width 64 (1M) and the LeNet (16k) are as fast or faster
# as one row (a few large operations instead of a few per layer), at 2 or 8 trials. The limit sits
# between the two measured sizes.
ROW_LIMIT = 1 << 22


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
    trials = observed[names[0]].shape[0]
    if sum(observed[n][0].numel() for n in names) >= ROW_LIMIT:
        return _layer_by_layer(produced, observed, names, layer_weights, objective, support_only)
    # All layers as one (T, P) row per trial: a few large operations instead of a few per layer,
    # forward and backward (the unit weights of the default skip their multiplication).
    produced_flat = torch.cat([produced[n].reshape(trials, -1) for n in names], 1)
    observed_flat = torch.cat([observed[n].reshape(trials, -1) for n in names], 1)
    if support_only:
        produced_flat = produced_flat * (observed_flat != 0)
    scale = None
    if any(w != 1.0 for w in layer_weights):
        scale = torch.cat([observed_flat.new_full((observed[n][0].numel(),), float(w))
                           for n, w in zip(names, layer_weights, strict=True)])

    def weighted_sum(values: torch.Tensor) -> torch.Tensor:
        return (values if scale is None else values * scale).sum(1)

    if objective == "l2":
        return weighted_sum((produced_flat - observed_flat).pow(2))
    if objective == "cosine":
        dot = weighted_sum(produced_flat * observed_flat)
        produced_sq = weighted_sum(produced_flat.pow(2))
        observed_sq = weighted_sum(observed_flat.pow(2))
        return 1.0 - dot / ((produced_sq + _NORM_FLOOR).sqrt() * (observed_sq + _NORM_FLOOR).sqrt())
    raise ValueError(f"unknown objective {objective!r}; use 'l2' or 'cosine'")


def _layer_by_layer(produced: dict[str, torch.Tensor], observed: dict[str, torch.Tensor], names: list[str],
                    layer_weights: Sequence[float], objective: str, support_only: bool) -> torch.Tensor:
    """:func:`gradient_distance` summed over layers, each reduced on its own (large models).

    The same sums as the concatenated row, without copying the gradients into it; each layer's
    temporaries are that layer's size.
    """
    if objective not in ("l2", "cosine"):
        raise ValueError(f"unknown objective {objective!r}; use 'l2' or 'cosine'")
    trials = observed[names[0]].shape[0]
    dot = squares = observed_squares = produced[names[0]].new_zeros(trials)
    for name, weight in zip(names, layer_weights, strict=True):
        mine = produced[name].reshape(trials, -1)
        theirs = observed[name].reshape(trials, -1)
        if support_only:
            mine = mine * (theirs != 0)
        if objective == "l2":
            difference = mine - theirs
            squares = squares + weight * (difference * difference).sum(1)
        else:
            dot = dot + weight * (mine * theirs).sum(1)
            squares = squares + weight * (mine * mine).sum(1)
            observed_squares = observed_squares + weight * (theirs * theirs).sum(1)
    if objective == "l2":
        return squares
    return 1.0 - dot / ((squares + _NORM_FLOOR).sqrt() * (observed_squares + _NORM_FLOOR).sqrt())


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
