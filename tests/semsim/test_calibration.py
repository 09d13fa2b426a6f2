"""Threshold calibration and the AUC / balanced-accuracy scores that judge metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semsim_audit.semsim.calibration import (
    balanced_accuracy,
    borderline_band,
    calibrate_threshold,
    roc_auc,
)


def test_separable_distances_calibrate_to_perfect_balanced_accuracy() -> None:
    rng = np.random.default_rng(0)
    recognizable = rng.uniform(0.05, 0.4, size=30)
    unrecognizable = rng.uniform(0.6, 1.5, size=70)
    distances = np.concatenate([recognizable, unrecognizable])
    labels = np.concatenate([np.ones(30, bool), np.zeros(70, bool)])
    order = rng.permutation(100)
    threshold, score = calibrate_threshold(torch.tensor(distances[order]), torch.tensor(labels[order]))
    assert score == 1.0
    assert recognizable.max() < threshold < unrecognizable.min()
    assert balanced_accuracy(distances <= threshold, labels) == 1.0


def test_calibration_balances_classes_rather_than_counting_pairs() -> None:
    # 90 easy negatives and 10 positives of which 5 overlap the negatives: plain accuracy would
    # favour calling nothing recognizable; balanced accuracy must still catch the clear positives.
    distances = np.concatenate([np.full(5, 0.1), np.full(5, 0.9), np.linspace(0.8, 1.0, 90)])
    labels = np.concatenate([np.ones(10, bool), np.zeros(90, bool)])
    threshold, score = calibrate_threshold(distances, labels)
    assert 0.1 < threshold < 0.8
    assert score == pytest.approx(0.75)


def test_tied_distances_get_the_same_call() -> None:
    threshold, _ = calibrate_threshold([0.2, 0.2, 0.2, 0.7], [True, False, True, False])
    assert threshold > 0.2  # never a cut between two equal distances


def test_auc_known_values() -> None:
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5
    assert roc_auc([float("inf"), 30.0, 10.0], [1, 1, 0]) == 1.0  # PSNR of an exact copy


def test_single_class_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="both classes"):
        calibrate_threshold([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [0, 0])



def _overlap(seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Recognizable pairs near 0.3, unrecognizable near 0.9, overlapping around 0.6 as ``spread`` grows."""
    rng = np.random.default_rng(seed)
    distances = np.concatenate([rng.normal(0.3, spread, 500), rng.normal(0.9, spread, 500)]).clip(0, 2)
    return distances, np.concatenate([np.ones(500, bool), np.zeros(500, bool)])


def test_borderline_band_is_where_the_labels_disagree_around_the_threshold() -> None:
    distances, labels = _overlap(0, spread=0.15)
    threshold, _ = calibrate_threshold(distances, labels)
    low, high = borderline_band(distances, labels, threshold)
    assert low < threshold < high
    # With equal spreads the two classes are 9:1 at 0.52 and 0.68 (the 90% confidence edges).
    assert 0.42 < low < 0.58 and 0.62 < high < 0.78
    just_below = (distances < low) & (distances > low - 0.1)
    just_above = (distances > high) & (distances < high + 0.1)
    assert labels[just_below].mean() >= 0.8 and (~labels[just_above]).mean() >= 0.8
    inside = (distances >= low) & (distances <= high)
    assert 0.2 < labels[inside].mean() < 0.8


def test_borderline_band_stays_in_the_gap_when_the_classes_separate() -> None:
    distances = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
    labels = np.array([True, True, True, False, False, False])
    threshold, _ = calibrate_threshold(distances, labels)
    assert 0.3 <= borderline_band(distances, labels, threshold)[0] <= threshold
    assert threshold <= borderline_band(distances, labels, threshold)[1] <= 0.9


def test_borderline_band_widens_with_label_noise_and_with_the_confidence_asked_for() -> None:
    clear, clear_labels = _overlap(1, spread=0.1)
    noisy, noisy_labels = _overlap(1, spread=0.25)
    widths = []
    for distances, labels in ((clear, clear_labels), (noisy, noisy_labels)):
        threshold, _ = calibrate_threshold(distances, labels)
        low, high = borderline_band(distances, labels, threshold)
        widths.append(high - low)
    assert widths[0] < widths[1]
    threshold, _ = calibrate_threshold(noisy, noisy_labels)
    loose = borderline_band(noisy, noisy_labels, threshold, confidence=0.7)
    strict = borderline_band(noisy, noisy_labels, threshold, confidence=0.97)
    assert strict[0] <= loose[0] and strict[1] >= loose[1]
    with pytest.raises(ValueError, match="confidence"):
        borderline_band(noisy, noisy_labels, threshold, confidence=1.0)
