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


def _row(quality, case, ours: tuple[float, float], reference: tuple[float, float] | None) -> dict:
    def scores(psnr: float, seconds: float):
        return quality.Scores(psnr=psnr, ssim=0.5, semsim=None, label_accuracy=1.0, seconds=seconds)

    return {"case": case, "ours": scores(*ours), "reference": scores(*reference) if reference else None}


def test_repeated_runs_report_every_ratio_their_median_and_changed_scores(capsys) -> None:
    quality = _attack_quality()
    case = quality.CASES[0]
    runs = [[_row(quality, case, (50.0, 40.0), (51.0, 100.0))],
            [_row(quality, case, (50.0, 60.0), (51.0, 100.0))],
            [_row(quality, case, (50.0, 30.0), (51.0, 50.0))]]
    quality.print_wall_times(runs)
    line = [text for text in capsys.readouterr().out.splitlines() if text.startswith(f"| {case.name}")][0]
    assert line == f"| {case.name} | 40.0, 60.0, 30.0 | 100.0, 100.0, 50.0 | 0.40, 0.60, 0.60 | 0.60 |"
    assert quality._same_results(runs) == []
    runs[2][0]["ours"].psnr = 49.0
    assert quality._same_results(runs) == [f"{case.name} (ours)"]


def test_the_lbfgs_phase_table_accounts_for_the_whole_run() -> None:
    # benchmarks/lbfgs_phases.py at two iterations: every phase it times, and the rest, add up to the run.
    import subprocess

    completed = subprocess.run([sys.executable, str(BENCHMARKS / "lbfgs_phases.py"), "--iterations", "2"],
                               capture_output=True, text=True, timeout=300, check=True)
    lines = completed.stdout.splitlines()
    total = float(lines[0].rsplit(", ", 1)[1].removesuffix(" s"))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines if line.startswith("| ")}
    assert {"evaluations, several trials", "directions, several trials",
            "line search, bookkeeping, the rest"} <= set(rows)
    timed = sum(float(row[2]) for row in rows.values() if row[2] != "seconds")
    assert timed == pytest.approx(total, abs=0.25)
