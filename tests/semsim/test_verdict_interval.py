"""The verdict benchmark's interval on a balanced accuracy: identities resampled together."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from module_files import load_module  # tests/module_files.py

from semsim_audit.semsim.calibration import balanced_accuracy

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def verdict() -> ModuleType:
    for helper in ("semsim_attack_outputs", "semsim_sample_efficiency"):  # imported by name there
        if helper not in sys.modules:
            sys.modules[helper] = load_module(BENCHMARKS / f"{helper}.py", helper)
    return load_module(BENCHMARKS / "semsim_verdict.py", "semsim_verdict")


def _judged(identities: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ten pairs per identity, half recognizable; the judge is right on 80 % of them."""
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(identities), 10)
    labels = np.tile(np.arange(10) < 5, identities)
    called = np.where(rng.random(owners.size) < 0.8, labels, ~labels)
    return called, labels, owners


def test_interval_holds_the_estimate_and_narrows_with_more_identities(verdict: ModuleType) -> None:
    widths = []
    for identities in (40, 400):
        called, labels, owners = _judged(identities, seed=identities)
        low, high = verdict.identity_interval(called, labels, owners, draws=300)
        assert low <= balanced_accuracy(called, labels) <= high
        assert 0.7 < low < high < 0.9
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # ten times the identities: about a third of the width


def test_a_judge_right_on_every_pair_has_no_spread(verdict: ModuleType) -> None:
    labels = np.tile(np.arange(10) < 5, 20)
    owners = np.repeat(np.arange(20), 10)
    assert verdict.identity_interval(labels.copy(), labels, owners, draws=50) == (1.0, 1.0)


def test_pairs_of_one_identity_are_resampled_together(verdict: ModuleType) -> None:
    # Each identity is judged all right or all wrong: resampling identities sees that clustering, so the
    # interval is wider than one that would treat the 200 pairs as independent (about +-0.07).
    labels = np.tile(np.arange(10) < 5, 20)
    owners = np.repeat(np.arange(20), 10)
    right = np.repeat(np.arange(20) % 2 == 0, 10)
    called = np.where(right, labels, ~labels)
    low, high = verdict.identity_interval(called, labels, owners, draws=500)
    assert high - low > 0.3
