"""The sweep logic: spec parsing, the cell grid, resumable state, aggregation and the Pareto front."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from semsim_audit.bench import (
    Cell,
    CellResult,
    DefenseSpec,
    SweepState,
    aggregate,
    cell_grid,
    parse_defense,
    parse_defense_option,
    result_from_report,
    run_sweep,
    write_outputs,
)
from semsim_audit.report import ClientAudit, PrivacyReport, ReconstructionScore, RoundRecord


def test_parse_defense_specs() -> None:
    assert parse_defense("none") == DefenseSpec("none", (None,))
    assert parse_defense("noise:0.001,0.01,0.1") == DefenseSpec("noise", (0.001, 0.01, 0.1))
    assert parse_defense(" prune : 0.5, 0.99 ") == DefenseSpec("prune", (0.5, 0.99))
    assert parse_defense("quantize:sign,4") == DefenseSpec("quantize", ("sign", 4))
    assert parse_defense("clip:1.0,1") == DefenseSpec("clip", (1.0,))  # duplicates dropped
    assert parse_defense("dp-fixed:0.5").strengths == (0.5,)
    assert parse_defense("localdp:10").strengths == (10.0,)


@pytest.mark.parametrize("spec, words", [
    ("blur:1", "unknown defense 'blur'"),
    ("noise", "give strengths"),
    ("noise:", "give strengths"),
    ("noise:0.1,,0.2", "give strengths"),
    ("noise:-1", "not in [0, inf)"),
    ("noise:abc", "'abc' is not a number"),
    ("prune:1.0", "not in [0, 1)"),
    ("clip:0", "not in (0, inf)"),
    ("quantize:3.5", "neither 'sign' nor a bit count"),
    ("quantize:17", "neither 'sign' nor a bit count"),
    ("none:1", "takes no strengths"),
])
def test_bad_specs_name_the_problem(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match="--defense") as error:
        parse_defense(spec)
    assert words in str(error.value)


def test_defense_options() -> None:
    assert parse_defense_option("noise.clip=2") == ("defense.noise.clip", 2.0)
    assert parse_defense_option("localdp.delta=1e-6") == ("defense.localdp.delta", 1e-6)
    for bad in ("noise.sigma=1", "clip=1", "noise.clip", "noise.clip=-1", "blur.x=1"):
        with pytest.raises(ValueError, match="--defense-option"):
            parse_defense_option(bad)


def test_cell_grid_and_run_config() -> None:
    specs = [parse_defense("none"), parse_defense("noise:0.01,0.1"), parse_defense("none")]
    cells = cell_grid(specs, [0, 1])
    assert [c.label for c in cells] == ["none", "none", "noise 0.01", "noise 0.01", "noise 0.1", "noise 0.1"]
    assert len({c.cell_id for c in cells}) == len(cells)
    options = {"defense.noise.clip": 1.0, "defense.localdp.delta": 1e-6}
    assert cells[2].run_config(options) == {"defense.seed": 0, "defense.noise.sigma": 0.01,
                                            "defense.noise.clip": 1.0}
    assert cells[1].run_config(options) == {"defense.seed": 1}
    assert Cell("quantize", "sign", 2).cell_id == "quantize-sign-seed2"
    with pytest.raises(ValueError, match="--seeds"):
        cell_grid(specs, [])


def _report(accuracy: float, flags: list[bool], semsim: float) -> PrivacyReport:
    scores = [ReconstructionScore(original_index=i, semsim=semsim, recognizable=f, psnr=10.0 + i, ssim=0.5)
              for i, f in enumerate(flags)]
    rounds = [RoundRecord(round=1, accuracy=accuracy / 2,
                          clients=[ClientAudit(node_id=1, attack="a", status="ok", scores=scores)]),
              RoundRecord(round=2, accuracy=accuracy,
                          clients=[ClientAudit(node_id=2, attack="a", status="failed", reason="x")])]
    return PrivacyReport(rounds=[r.summarise() for r in rounds])


def test_result_pools_scored_reconstructions_and_takes_the_final_accuracy() -> None:
    result = result_from_report(Cell("none", None, 0), _report(0.8, [True, False, False, True], 0.2), 1.5)
    assert result.accuracy == 0.8 and result.leakage_rate == 0.5 and result.mean_semsim == 0.2
    assert result.mean_psnr == pytest.approx(11.5) and result.reconstructions == 4 and result.rounds == 2


def _fake_runner(calls: list[str], fail: set[str] = frozenset()):
    def run_cell(cell: Cell, folder: Path) -> PrivacyReport:
        calls.append(cell.cell_id)
        assert folder.is_dir()
        if cell.label in fail:
            raise RuntimeError("attack diverged\nsecond line")
        leak = {"none": [True, True], "noise 0.1": [False, False]}.get(cell.label, [True, False])
        return _report(0.9 - 0.1 * cell.seed - (0.2 if cell.defense == "noise" else 0.0), leak, 0.1)
    return run_cell


def test_failed_cell_is_reported_and_the_sweep_goes_on(tmp_path: Path) -> None:
    cells = cell_grid([parse_defense("none"), parse_defense("noise:0.01,0.1")], [0, 1])
    calls: list[str] = []
    results = run_sweep(cells, SweepState(tmp_path, {"rounds": 1}), _fake_runner(calls, {"noise 0.01"}))
    assert len(calls) == 6 and [r.status for r in results].count("failed") == 2
    failed = next(r for r in results if r.status == "failed")
    assert failed.reason.startswith("RuntimeError: attack diverged") and "\n" not in failed.reason
    rows = aggregate(results)
    assert [(r.label, r.seeds, r.failed) for r in rows] == [("none", 2, 0), ("noise 0.01", 0, 2),
                                                           ("noise 0.1", 2, 0)]


def test_interrupted_sweep_resumes_without_redoing_cells(tmp_path: Path) -> None:
    cells = cell_grid([parse_defense("none"), parse_defense("prune:0.5,0.9")], [0, 1])
    calls: list[str] = []
    run_cell = _fake_runner(calls)

    def interrupted(cell: Cell, folder: Path) -> PrivacyReport:
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C is not a failed cell: the sweep stops
        return run_cell(cell, folder)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cells, SweepState(tmp_path, {"rounds": 1}), interrupted)
    assert calls == [c.cell_id for c in cells[:3]]
    skipped: list[str] = []

    def on_done(result: CellResult, was_skipped: bool) -> None:
        if was_skipped:
            skipped.append(result.cell.cell_id)

    results = run_sweep(cells, SweepState(tmp_path, {"rounds": 1}), run_cell, on_done=on_done)
    assert calls[3:] == [c.cell_id for c in cells[3:]]
    assert skipped == [c.cell_id for c in cells[:3]]
    assert [r.cell for r in results] == cells
    with pytest.raises(ValueError, match="other settings \\(rounds\\)"):
        run_sweep(cells, SweepState(tmp_path, {"rounds": 2}), run_cell)


def test_failed_cells_are_retried_on_resume(tmp_path: Path) -> None:
    cells = cell_grid([parse_defense("none")], [0])
    calls: list[str] = []
    run_sweep(cells, SweepState(tmp_path, {}), _fake_runner(calls, {"none"}))
    results = run_sweep(cells, SweepState(tmp_path, {}), _fake_runner(calls))
    assert len(calls) == 2 and results[0].status == "ok"


def _result(defense: str, strength, seed: int, accuracy: float, leakage: float) -> CellResult:
    return CellResult(defense, strength, seed, "ok", accuracy=accuracy, leakage_rate=leakage, mean_semsim=0.3)


def test_aggregate_mean_std_and_pareto_front() -> None:
    results = [_result("none", None, 0, 0.80, 0.9), _result("none", None, 1, 0.76, 0.7),
               _result("noise", 0.1, 0, 0.40, 0.0), _result("noise", 0.1, 1, 0.40, 0.0),
               _result("prune", 0.5, 0, 0.50, 0.9),  # dominated by none: less accurate, as leaky
               _result("prune", 0.9, 0, 0.75, 0.5)]
    rows = {r.label: r for r in aggregate(results)}
    assert rows["none"].mean["accuracy"] == pytest.approx(0.78)
    assert rows["none"].std["accuracy"] == pytest.approx(math.sqrt(0.0008))
    assert rows["noise 0.1"].std["leakage_rate"] == 0.0
    assert {k for k, r in rows.items() if r.pareto} == {"none", "noise 0.1", "prune 0.9"}
    # A second prune 0.9 seed makes it as accurate as none (0.78) and less leaky: none leaves the front.
    rows = {r.label: r for r in aggregate(results + [_result("prune", 0.9, 1, 0.81, 0.5)])}
    assert {k for k, r in rows.items() if r.pareto} == {"noise 0.1", "prune 0.9"}


def test_write_outputs(tmp_path: Path) -> None:
    results = [_result("none", None, 0, 0.8, 0.9), _result("noise", 0.1, 0, 0.4, 0.0),
               CellResult("prune", 0.9, 0, "failed", reason="OOM")]
    rows = aggregate(results)
    files = write_outputs(rows, results, {"dataset": "photos"}, tmp_path)
    assert set(files) == {"csv", "json", "plot", "html"}
    table = list(csv.DictReader(files["csv"].open()))
    assert [t["defense"] for t in table] == ["none", "noise", "prune"]
    assert table[0]["accuracy_mean"] == "0.8" and table[2]["seeds"] == "0"
    payload = json.loads(files["json"].read_text())
    assert payload["settings"] == {"dataset": "photos"} and len(payload["cells"]) == 3
    page = files["html"].read_text()
    assert "data:image/png;base64," in page and "OOM" in page and "noise 0.1" in page
    assert files["plot"].stat().st_size > 1000
