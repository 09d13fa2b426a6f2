"""`semsim-audit bench`: spec errors exit 2; a tiny real sweep ranks the defenses and resumes; DLG preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from semsim_audit.cli.main import app

# A tiny audited federation: 2 clients, 1 round, 1 image per local step, short attacks on the
# DLG LeNet (which leaks most), so the whole sweep fits the CI budget on 2 CPU cores.
TINY = ["--dataset", "photos", "--model", "lenet", "--clients", "2", "--rounds", "1",
        "--samples-per-client", "4", "--batch-size", "1", "--local-steps", "1", "--lr", "0.01",
        "--attack", "inverting-gradients:150", "--attack", "idlg:10", "--audited", "2", "--device", "cpu",
        "--labels-known"]


@pytest.mark.parametrize("args, words", [
    (["--defense", "blur:1"], "unknown defense 'blur'"),
    (["--defense", "prune:1.5"], "not in [0, 1)"),
    (["--defense", "noise"], "give strengths"),
    (["--defense", "quantize:7.5"], "bit count"),
    (["--defense-option", "noise.sigma=2"], "--defense-option"),
    (["--seeds", "0"], "--seeds"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--attack", "idlg:0"], "positive integer"),
    (["--attack", "idlg:10", "--attack", "idlg:20"], "each attack once"),
    (["--attack-only", "--defense", "localdp:1"], "need a federated run"),
    (["--preset", "dlg"], "--preset"),
    (["--dataset", "nope"], "--dataset"),
])
def test_bad_sweep_specs_exit_2_with_one_line(args: list[str], words: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.output
    assert not (tmp_path / "sweep" / "cells").exists()


def test_resuming_with_other_settings_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"rounds": 7}))
    result = CliRunner().invoke(app, ["bench", *TINY, "--out", str(out)])
    assert result.exit_code == 2 and "other settings" in result.output


@pytest.mark.slow
def test_tiny_sweep_ranks_defenses_and_resumes(tmp_path: Path) -> None:
    from semsim_audit.config import AuditConfig
    from semsim_audit.strategies.simulation import run_audited_simulation

    out = tmp_path / "sweep"
    args = ["bench", *TINY, "--defense", "none", "--defense", "noise:1.0", "--defense", "prune:0.99",
            "--seeds", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cells = {c["defense"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert all(c["status"] == "ok" for c in cells.values()), cells
    none, noise, prune = cells["none"], cells["noise"], cells["prune"]
    # Every cell ran both attacks on the same audited updates; the pruned one also the adaptive attack.
    assert set(none["attacks"]) == {"inverting-gradients", "idlg"}
    assert set(prune["attacks"]) == {"inverting-gradients", "idlg", "inverting-gradients+mask"}
    assert all(a["judged"] == 2 for c in cells.values() for a in c["attacks"].values()), cells
    assert none["leakage_rate"] == max(a["leakage_rate"] for a in none["attacks"].values())
    # Strong noise and 99% pruning leave the attacker less: reconstructions farther from the
    # originals, and never more of them recognizable. (At this CPU attack budget no reconstruction
    # is near the SemSim threshold, so pixel closeness is what orders the cells.)
    for defended in (noise, prune):
        assert defended["mean_psnr"] < none["mean_psnr"] - 1.0, (defended, none)
        assert defended["mean_ssim"] < none["mean_ssim"], (defended, none)
        assert defended["leakage_rate"] <= none["leakage_rate"], (defended, none)
    for name in ("results.csv", "results.md", "report.html", "tradeoff.png"):
        assert (out / name).is_file(), name

    # "none" is exactly the undefended run: the defense mods pass everything through. The audit
    # does not touch training, so a one-iteration attack keeps this run cheap.
    undefended = run_audited_simulation(
        dataset="photos", model="lenet", model_options={"uniform_init": True}, num_clients=2, rounds=1,
        batch_size=1, local_steps=1, lr=0.01, seed=0, samples_per_client=4,
        audit=AuditConfig(attack_config={"iterations": 1}, clients=1, device="cpu"))
    assert undefended.rounds[-1].accuracy == pytest.approx(none["accuracy"], abs=1e-9)

    # Run again: every cell finished, so nothing is recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped (finished before)") == 3
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")} == stamps


def test_the_cpu_sized_dlg_preset_runs_leakage_only(tmp_path: Path) -> None:
    # The preset's settings fill every option left at its default; those given here win (fewer images
    # and seeds, one short attack, two defenses), so the run is a CI-sized slice of the preset.
    out = tmp_path / "dlg"
    args = ["bench", "--preset", "dlg-defenses-cpu", "--defense", "none", "--defense", "gaussian:1e-1",
            "--seeds", "1", "--images", "2", "--attack", "idlg:20", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "sweep.json").read_text())
    assert settings["cell"] == "attack-only" and settings["preset"] == "dlg-defenses-cpu"
    assert settings["model"] == "lenet" and settings["model_options"] == {"uniform_init": True}
    assert settings["images"] == 2 and settings["attacks"] == ["idlg:20"] and settings["restarts"] == 1
    cells = {c["defense"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    none, noisy = cells["none"], cells["gaussian"]
    assert none["reconstructions"] == noisy["reconstructions"] == 2
    # Noise of variance 0.1 on every gradient entry leaves DLG nothing to recognise (DLG, sec. 5).
    assert noisy["leakage_rate"] == 0.0 and noisy["mean_psnr"] < none["mean_psnr"] - 5.0
    assert "attack-only" in result.output and (out / "results.md").is_file()
