"""Threshold calibration and the AUC / balanced-accuracy scores that judge metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semsim_audit.semsim.calibration import balanced_accuracy, calibrate_threshold, roc_auc


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
