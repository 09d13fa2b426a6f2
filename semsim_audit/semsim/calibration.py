"""Threshold calibration and the scores that judge a metric: ROC AUC and balanced accuracy."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["roc_auc", "balanced_accuracy", "calibrate_threshold"]

ArrayLike = torch.Tensor | np.ndarray | list[float] | list[bool]


def _as_numpy(values: ArrayLike) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return array.astype(np.float64).reshape(-1)


def _binary_labels(labels: ArrayLike) -> np.ndarray:
    array = _as_numpy(labels)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1 or bool")
    positives = int(array.sum())
    if positives == 0 or positives == array.size:
        raise ValueError(f"labels need both classes, got {positives} positive of {array.size}")
    return array.astype(bool)


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve; higher ``scores`` should mean label 1. Ties count one half."""
    values = _as_numpy(scores)
    truth = _binary_labels(labels)
    if values.shape != truth.shape:
        raise ValueError(f"scores and labels differ in length: {values.size} vs {truth.size}")
    # +inf (PSNR of an exact copy) ranks above everything, which is what it means; NaN has no rank.
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    ranks = rankdata(values)  # Mann-Whitney: mean rank of the positives
    positives, negatives = truth.sum(), (~truth).sum()
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def balanced_accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Mean of the true-positive and true-negative rates."""
    predicted = _as_numpy(predictions).astype(bool)
    truth = _binary_labels(labels)
    if predicted.shape != truth.shape:
        raise ValueError(f"predictions and labels differ in length: {predicted.size} vs {truth.size}")
    return float(0.5 * (predicted[truth].mean() + (~predicted[~truth]).mean()))


def calibrate_threshold(distances: ArrayLike, recognizable: ArrayLike) -> tuple[float, float]:
    """The distance threshold (recognizable = distance <= threshold) maximising balanced accuracy.

    Returns ``(threshold, balanced_accuracy)``. The threshold sits midway between the two
    distances it separates, so it does not sit on a training point.
    """
    values = _as_numpy(distances)
    truth = _binary_labels(recognizable)
    if values.shape != truth.shape:
        raise ValueError(f"distances and labels differ in length: {values.size} vs {truth.size}")
    if not np.isfinite(values).all():
        raise ValueError("distances contain NaN or infinite values")
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_truth = values[order], truth[order]
    # Cut after position k: the first k+1 distances are called recognizable. Only cut where the
    # distance changes, so tied distances always get the same call.
    true_positive_rate = np.cumsum(sorted_truth) / sorted_truth.sum()
    true_negative_rate = 1.0 - np.cumsum(~sorted_truth) / (~sorted_truth).sum()
    scores = 0.5 * (true_positive_rate + true_negative_rate)
    valid = np.append(sorted_values[1:] > sorted_values[:-1], True)
    scores = np.where(valid, scores, -np.inf)
    best = int(np.argmax(scores))
    # Calling nothing recognizable scores 0.5; so does calling everything (the last cut).
    if best + 1 < sorted_values.size:
        threshold = 0.5 * (sorted_values[best] + sorted_values[best + 1])
    else:
        threshold = float(sorted_values[-1])
    return float(max(threshold, 0.0)), float(scores[best])
