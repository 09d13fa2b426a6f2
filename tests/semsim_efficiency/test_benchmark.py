"""The sample-efficiency benchmark end to end on a tiny setting: runs, tables, margins and the plot."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from module_files import load_module  # tests/module_files.py
from rich.console import Console

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "semsim_sample_efficiency.py"


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return load_module(SCRIPT, "semsim_sample_efficiency")


@pytest.mark.slow
def test_tiny_benchmark_reports_every_variant_size_and_seed(benchmark: ModuleType, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    results = benchmark.run([4, 6], [0, 1], epochs=1, heldout_identities=4,
                            variants=["default", "released-scratch"], workdir=tmp_path, console=console)
    methods = {run["method"] for run in results["runs"]}
    assert {"PSNR", "SSIM", "SemSim default", "SemSim released-scratch"} <= methods
    semsim_runs = [run for run in results["runs"] if run["method"].startswith("SemSim")]
    assert len(semsim_runs) == 2 * 2 * 2  # variants x sizes x seeds
    assert all(0.0 <= run["auc"] <= 1.0 and run["seconds"] > 0 for run in semsim_runs)
    tables, summary = benchmark.summarise(results, [4, 6])
    default = summary["SemSim default"][6]
    aucs = [run["auc"] for run in semsim_runs if run["method"] == "SemSim default" and run["size"] == 6]
    assert default["auc_mean"] == pytest.approx(np.mean(aucs))
    pixel_best = max(run["auc"] for run in results["runs"] if run["method"] in ("PSNR", "SSIM"))
    assert default["min_margin"] == pytest.approx(min(aucs) - pixel_best)
    assert set(summary["training_seconds"]) == {"SemSim default", "SemSim released-scratch"}
    for table in tables:
        console.print(table)
    assert "worst seed - best of PSNR/SSIM" in console.export_text()
    plot = tmp_path / "curves.png"
    benchmark.plot(summary, [4, 6], results["shipped"]["auc"], plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_variant_is_refused(benchmark: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["semsim_sample_efficiency.py", "--variants", "default,magic"])
    with pytest.raises(SystemExit) as stopped:
        benchmark.main()
    assert stopped.value.code == 2 and "unknown ['magic']" in capsys.readouterr().err
