"""The sweep logic: specs, the cell grid, resumable state, the strongest attack, intervals, the front."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from semsim_audit.bench import (
    ADAPTIVE_ATTACKS,
    DEFAULT_ATTACKS,
    DEFAULT_DEFENSES,
    FEDERATION,
    PRESETS,
    AttackSpec,
    Cell,
    CellResult,
    DefenseSpec,
    SweepState,
    aggregate,
    cell_attacks,
    cell_grid,
    markdown_table,
    parse_attack,
    parse_defense,
    parse_defense_option,
    result_from_report,
    run_sweep,
    seed_interval,
    write_outputs,
)
from semsim_audit.report import (
    ClientAudit,
    PrivacyReport,
    ReconstructionScore,
    RoundRecord,
    wilson_interval,
)


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
    assert set(files) == {"csv", "json", "markdown", "plot", "html"}
    table = list(csv.DictReader(files["csv"].open()))
    assert [t["defense"] for t in table] == ["none", "noise", "prune"]
    assert table[0]["accuracy_mean"] == "0.8" and table[2]["seeds"] == "0"
    payload = json.loads(files["json"].read_text())
    assert payload["settings"] == {"dataset": "photos"} and len(payload["cells"]) == 3
    page = files["html"].read_text()
    assert "data:image/png;base64," in page and "OOM" in page and "noise 0.1" in page
    assert files["plot"].stat().st_size > 1000


# ------------------------------------------------------------------ attacks: the strongest one decides


def _audits(attack: str, flags: list[bool], semsim: float, node: int = 1) -> ClientAudit:
    return ClientAudit(node_id=node, attack=attack, status="ok", scores=[
        ReconstructionScore(original_index=i, semsim=semsim, recognizable=f, psnr=20.0, ssim=0.5)
        for i, f in enumerate(flags)])


def _multi_attack_report(accuracy: float = 0.4) -> PrivacyReport:
    rounds = [RoundRecord(round=1, clients=[_audits("inverting-gradients", [True, False], 0.5),
                                            _audits("idlg", [True, True], 0.2)]),
              RoundRecord(round=21, accuracy=accuracy,
                          clients=[_audits("inverting-gradients", [False, False], 0.9),
                                   _audits("idlg", [True, False], 0.4)])]
    return PrivacyReport(rounds=rounds)


def test_the_cell_reports_its_strongest_attack_and_every_attack() -> None:
    result = result_from_report(Cell("prune", 0.9, 0), _multi_attack_report(), 2.0)
    # idlg: 3 of 4 recognizable; inverting-gradients: 1 of 4. The higher leakage is the cell's.
    assert result.attack == "idlg" and result.leakage_rate == 0.75
    assert (result.recognizable, result.reconstructions) == (3, 4)
    assert result.attacks["inverting-gradients"]["leakage_rate"] == 0.25
    assert result.mean_semsim == pytest.approx(0.3) and result.accuracy == 0.4
    # Wilson interval of 3 of 4, and the per-round intervals of each attack.
    assert (result.leakage_low, result.leakage_high) == pytest.approx(wilson_interval(3, 4))
    rounds = result.attacks["idlg"]["rounds"]
    assert [(r["round"], r["leakage_rate"]) for r in rounds] == [(1, 1.0), (21, 0.5)]
    assert (rounds[0]["leakage_low"], rounds[0]["leakage_high"]) == pytest.approx(wilson_interval(2, 2))


def test_equal_leakage_goes_to_the_closer_attack() -> None:
    report = PrivacyReport(rounds=[RoundRecord(round=1, clients=[
        _audits("inverting-gradients", [False, False], 0.9), _audits("idlg", [False, False], 0.7)])])
    assert result_from_report(Cell("noise", 0.1, 0), report, 1.0).attack == "idlg"


def _seed(defense: str, strength, seed: int, accuracy: float, leaks: dict[str, float]) -> CellResult:
    attacks = {name: {"leakage_rate": rate, "judged": 8, "recognizable": round(rate * 8), "mean_semsim": 0.5,
                      "mean_psnr": 20.0, "mean_ssim": 0.5} for name, rate in leaks.items()}
    strongest = max(leaks, key=leaks.get)
    return CellResult(defense, strength, seed, "ok", accuracy=accuracy, leakage_rate=leaks[strongest],
                      attack=strongest, attacks=attacks)


def test_a_row_takes_the_attack_strongest_over_its_seeds() -> None:
    # Seed 0 leaks most to idlg, seed 1 to IG; IG is the stronger one on average (0.55 > 0.5).
    results = [_seed("none", None, 0, 0.4, {"inverting-gradients": 0.5, "idlg": 0.625}),
               _seed("none", None, 1, 0.38, {"inverting-gradients": 0.625, "idlg": 0.375})]
    (row,) = aggregate(results)
    assert row.attack == "inverting-gradients"
    assert row.mean["leakage_rate"] == pytest.approx(0.5625)
    assert row.attacks == pytest.approx({"inverting-gradients": 0.5625, "idlg": 0.5})
    # The pooled Wilson interval counts that attack's reconstructions over both seeds: 9 of 16.
    assert (row.recognizable, row.judged) == (9, 16)
    assert row.wilson == pytest.approx(wilson_interval(9, 16))


def test_seed_interval_is_students_t() -> None:
    assert seed_interval([0.3]) is None
    low, high = seed_interval([0.30, 0.40])
    # Two seeds: t(0.975, 1) = 12.706; s = 0.0707, s / sqrt(2) = 0.05.
    assert (low, high) == pytest.approx((0.35 - 12.706 * 0.05, 0.35 + 12.706 * 0.05), abs=1e-3)
    assert seed_interval([0.30, 0.40], clip=True) == pytest.approx((0.0, 0.985), abs=1e-3)
    low, high = seed_interval([0.2, 0.3, 0.4])
    assert (low, high) == pytest.approx((0.3 - 4.303 * 0.1 / math.sqrt(3), 0.3 + 4.303 * 0.1 / math.sqrt(3)),
                                        abs=1e-3)


def test_rows_show_intervals_over_seeds() -> None:
    results = [_result("none", None, 0, 0.80, 0.9), _result("none", None, 1, 0.76, 0.7),
               _result("noise", 0.1, 0, 0.40, 0.0)]
    rows = {r.label: r for r in aggregate(results)}
    assert rows["none"].interval["accuracy"] == pytest.approx(seed_interval([0.80, 0.76], clip=True))
    assert rows["none"].interval["leakage_rate"] == pytest.approx(seed_interval([0.9, 0.7], clip=True))
    assert rows["noise 0.1"].interval["accuracy"] is None  # one seed: no interval over seeds
    table = markdown_table(list(rows.values()))
    low, high = rows["none"].interval["accuracy"]
    assert f"0.78 [{low:.2f}, {high:.2f}]" in table


def test_the_front_says_when_intervals_do_not_separate_its_members() -> None:
    def seeds(defense: str, strength, accuracies: list[float], leak: float) -> list[CellResult]:
        return [_seed(defense, strength, i, a, {"idlg": leak}) for i, a in enumerate(accuracies)]

    # Clearly apart: noise is both more private and (within tight intervals) as accurate.
    apart = aggregate(seeds("none", None, [0.40, 0.41, 0.39], 1.0)
                      + seeds("noise", 0.3, [0.10, 0.11, 0.09], 0.0))
    assert [(r.label, r.pareto, r.rivals) for r in apart] == [("none", True, []), ("noise 0.3", True, [])]
    # prune 0.9 is on the front by its means (more accurate than noise 0.01), but the seeds scatter
    # so widely that noise 0.01, less leaky, may be as accurate: the front says so.
    close = aggregate(seeds("noise", 0.01, [0.30, 0.40], 0.0) + seeds("prune", 0.9, [0.20, 0.60], 0.125))
    rows = {r.label: r for r in close}
    assert rows["prune 0.9"].pareto and rows["prune 0.9"].rivals == ["noise 0.01"]
    assert rows["noise 0.01"].pareto and rows["noise 0.01"].rivals == ["prune 0.9"]
    assert "* ≈ noise 0.01" in markdown_table(close)


def test_attack_specs() -> None:
    assert parse_attack("idlg") == AttackSpec("idlg")
    assert parse_attack(" idlg:30 ") == AttackSpec("idlg", 30)
    spec = parse_attack("inverting-gradients+mask:200")
    assert (spec.label, spec.iterations, spec.mask) == ("inverting-gradients+mask", 200, True)
    config = spec.config(50, 2, seed=3)
    assert (config.iterations, config.restarts, config.match_support, config.seed) == (200, 2, True, 3)
    assert AttackSpec("idlg").config(50, 1).iterations == 50
    for bad, words in (("nope", "unknown attack 'nope'"), ("idlg:0", "positive integer"),
                       ("idlg:x", "positive integer")):
        with pytest.raises(ValueError, match="--attack") as error:
            parse_attack(bad)
        assert words in str(error.value)


def test_pruning_cells_get_the_adaptive_attack() -> None:
    attacks = [parse_attack(text) for text in DEFAULT_ATTACKS]
    assert [a.label for a in cell_attacks("noise", attacks)] == ["inverting-gradients", "idlg"]
    assert [a.label for a in cell_attacks("prune", attacks)] == ["inverting-gradients", "idlg",
                                                                 "inverting-gradients+mask"]
    plain = cell_attacks("prune", attacks, adaptive=False)
    assert [a.label for a in plain] == ["inverting-gradients", "idlg"]
    assert ADAPTIVE_ATTACKS["prune"] == ("inverting-gradients+mask",)
    # Named twice, the first spec of a label wins.
    twice = [parse_attack("idlg:30"), parse_attack("idlg:100")]
    assert [a.iterations for a in cell_attacks("none", twice)] == [30]


def test_the_dlg_presets_sweep_the_papers_strengths() -> None:
    # Zhu et al., NeurIPS 2019, sec. 5: noise variance 1e-4..1e-1 (Gaussian and Laplacian), pruning
    # 1%..70%, single images on the DLG LeNet, DLG with 300 L-BFGS iterations.
    gpu, cpu = PRESETS["dlg-defenses"], PRESETS["dlg-defenses-cpu"]
    for preset in (gpu, cpu):
        specs = {spec.name: spec.strengths for spec in map(parse_defense, preset.defenses)}
        assert specs == {"none": (None,), "gaussian": (1e-4, 1e-3, 1e-2, 1e-1),
                         "laplacian": (1e-4, 1e-3, 1e-2, 1e-1), "prune": (0.01, 0.1, 0.2, 0.3, 0.5, 0.7)}
        assert preset.options["attack_only"] and preset.options["model"] == "lenet"
        assert preset.options["uniform_init"] and preset.options["dataset"] == "photos"
        assert {parse_attack(a).attack for a in preset.attacks} == {"dlg", "idlg"}
    assert [parse_attack(a).iterations for a in gpu.attacks] == [300, 300]
    # The CPU variant: a smaller budget and fewer images, still two seeds for an interval.
    assert all(parse_attack(a).iterations < 300 for a in cpu.attacks)
    assert cpu.options["images"] < gpu.options["images"] and cpu.options["seeds"] >= 2


def test_the_command_line_defaults_are_the_sweeps() -> None:
    # The CLI writes them out (importing the sweep loads torch; --help must not wait for it).
    import inspect

    from semsim_audit.cli import bench as command

    assert command.DEFAULT_DEFENSES == DEFAULT_DEFENSES and command.DEFAULT_ATTACKS == DEFAULT_ATTACKS
    assert command.PRESET_NAMES == tuple(PRESETS)
    defaults = {name: p.default for name, p in inspect.signature(command.bench).parameters.items()}
    assert {key: defaults[key] for key in FEDERATION} == FEDERATION


def test_a_sweep_without_accuracy_plots_leakage_against_strength(tmp_path: Path) -> None:
    # Attack-only cells (the DLG preset) measure leakage alone: no front, a leakage-by-strength figure.
    results = [CellResult("none", None, 0, "ok", leakage_rate=1.0),
               *(CellResult("gaussian", v, 0, "ok", leakage_rate=rate)
                 for v, rate in ((1e-4, 1.0), (1e-3, 0.5), (1e-2, 0.0))),
               *(CellResult("prune", v, 0, "ok", leakage_rate=rate) for v, rate in ((0.1, 1.0), (0.5, 0.0)))]
    rows = aggregate(results)
    assert not any(r.pareto for r in rows)
    files = write_outputs(rows, results, {}, tmp_path)
    assert files["plot"].name == "leakage.png" and files["plot"].stat().st_size > 1000
    assert "Leakage against strength" in files["html"].read_text()
