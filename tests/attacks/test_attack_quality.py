"""Our attacks against the figures the published implementations reached on the same case (BENCHMARKS.md)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from semsim_audit.semsim import SemSim

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# breaching 0.1.2's `invertinggradients` attacker on the `ig-lenet` case of benchmarks/attack_quality.py
# (8 photos, 150 iterations), as BENCHMARKS.md records it ("Attacks side by side").
BREACHING_IG_LENET_PSNR = 14.8


def _attack_quality():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("attack_quality")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.slow
def test_inverting_gradients_is_not_below_breachings_recorded_figure() -> None:
    quality = _attack_quality()
    (case,) = [c for c in quality.CASES if c.name == "ig-lenet"]
    row = quality.run_case(case, SemSim.load(device="cpu"), quick=False, device=torch.device("cpu"),
                           with_reference=False)
    assert row["ours"].psnr >= BREACHING_IG_LENET_PSNR - 1.0, row["ours"]
