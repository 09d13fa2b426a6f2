"""Threshold calibration and the scores that judge a metric: ROC AUC and balanced accuracy."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["roc_auc", "balanced_accuracy", "calibrate_threshold", "borderline_band", "BORDERLINE_CONFIDENCE",
           "MAX_DISTANCE"]

# Outside the borderline band, at least this share of the calibration pairs at that distance agreed with the
# verdict (isotonic fit of the share recognizable against the distance).
BORDERLINE_CONFIDENCE = 0.9
# Distances between unit-length embeddings lie in [0, 2].
MAX_DISTANCE = 2.0

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


def _checked_distances(distances: ArrayLike, recognizable: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Distances and boolean labels as arrays of one length, the distances finite; else ValueError."""
    values = _as_numpy(distances)
    truth = _binary_labels(recognizable)
    if values.shape != truth.shape:
        raise ValueError(f"distances and labels differ in length: {values.size} vs {truth.size}")
    if not np.isfinite(values).all():
        raise ValueError("distances contain NaN or infinite values")
    return values, truth


def calibrate_threshold(distances: ArrayLike, recognizable: ArrayLike) -> tuple[float, float]:
    """The distance threshold (recognizable = distance <= threshold) maximising balanced accuracy.

    Returns ``(threshold, balanced_accuracy)``. The threshold sits midway between the two
    distances it separates, so it does not sit on a training point.
    """
    values, truth = _checked_distances(distances, recognizable)
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



def _decreasing_fit(values: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct sorted distances and the share recognizable there, fitted non-increasing in the distance.

    Pool adjacent violators (isotonic regression); equal distances are one point, weighted by their count.
    """
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    shares = np.bincount(inverse, weights=truth.astype(np.float64)) / counts
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for share, weight in zip(shares, counts, strict=True):
        means.append(float(share))
        weights.append(float(weight))
        sizes.append(1)
        while len(means) > 1 and means[-2] < means[-1]:
            mean, weight_last, size = means.pop(), weights.pop(), sizes.pop()
            total = weights[-1] + weight_last
            means[-1] = (means[-1] * weights[-1] + mean * weight_last) / total
            weights[-1] = total
            sizes[-1] += size
    return distinct, np.repeat(means, sizes)


def borderline_band(distances: ArrayLike, recognizable: ArrayLike, threshold: float,
                    confidence: float = BORDERLINE_CONFIDENCE) -> tuple[float, float]:
    """``(low, high)`` around ``threshold``: the distances at which the verdict is a borderline call.

    The share of pairs labelled recognizable is fitted as a non-increasing function of the distance
    (isotonic regression on these pairs). Below ``low`` it is at least ``confidence``; above ``high``
    at most ``1 - confidence``; in between, the labels at that distance disagree too often for either
    verdict to be sure. Each edge sits midway between two neighbouring distances (0 or 2 where the fit
    never gets that sure on a side) and the band always holds the threshold.
    """
    values, truth = _checked_distances(distances, recognizable)
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    distinct, fitted = _decreasing_fit(values, truth)
    sure_yes = np.flatnonzero(fitted >= confidence)
    sure_no = np.flatnonzero(fitted <= 1.0 - confidence)
    low, high = 0.0, MAX_DISTANCE
    if sure_yes.size:
        last = sure_yes[-1]
        following = distinct[min(last + 1, distinct.size - 1)]
        low = 0.5 * float(distinct[last] + following)
    if sure_no.size:
        first = sure_no[0]
        high = 0.5 * float(distinct[max(first - 1, 0)] + distinct[first])
    return min(low, threshold), max(high, threshold)
