"""The commands that run attacks: `attack` outside Flower, and the demo's real Flower simulation."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from semsim_audit.cli.main import app
from semsim_audit.report import read_jsonl
from semsim_audit.views.html import data_uri


@pytest.mark.slow
def test_attack_prints_scores_and_writes_a_run_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["attack", "--samples", "2", "--iterations", "3", "--device", "cpu",
                                      "--out", str(tmp_path)], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "inverting-gradients: 2 image(s)" in result.output
    assert "leakage rate" in result.output and "label accuracy" in result.output
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "report.json").is_file() and (run_dir / "console.svg").is_file()
    html = (run_dir / "report.html").read_text()
    assert data_uri(run_dir / "images" / "round-1" / "client-0" / "reconstruction-1.png") in html


@pytest.mark.slow
def test_demo_with_tiny_settings_writes_every_file(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "semsim_audit.cli.main", "demo", "--rounds", "2", "--clients", "2",
         "--audited", "1", "--every", "1", "--iterations", "3", "--device", "cpu",
         "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("report.jsonl", "report.json", "rounds.csv", "report.html", "console.svg",
                 "plots/rounds.png"):
        assert (run_dir / name).is_file(), name
    report = read_jsonl(run_dir / "report.jsonl")
    assert [r.round for r in report.rounds] == [1, 2]
    assert all(r.accuracy is not None and len(r.clients) == 1 for r in report.rounds)
    html = (run_dir / "report.html").read_text()
    for record in report.rounds:
        (audit,) = record.clients
        assert audit.status == "ok", audit.reason
        grid = run_dir / "images" / f"round-{record.round}" / f"client-{audit.node_id}" / "grid.png"
        assert grid.is_file()
        for score in audit.scores:
            assert score.original_image and score.reconstruction_image
            assert data_uri(run_dir / score.original_image) in html
            assert data_uri(run_dir / score.reconstruction_image) in html
    assert (run_dir / "rounds.csv").read_text().count("\n") == 3
    assert f"report: {run_dir / 'report.html'}\n" in completed.stdout


# The only columns allowed to differ between two runs of the same command: wall-clock times, and the
# worst client's node id (Flower's engine draws node ids at random each run; the audited clients are
# chosen by partition, which the report's client keys show).
VARYING_COLUMNS = ("attack_seconds", "finished_at", "worst_client")


def _rounds_that_must_repeat(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "rounds.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in VARYING_COLUMNS} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_the_same_demo_command_twice_gives_the_same_rounds(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for attempt in ("first", "second"):
        completed = subprocess.run(
            [sys.executable, "-m", "semsim_audit.cli.main", "demo", "--rounds", "3", "--clients", "4",
             "--audited", "2", "--every", "2", "--iterations", "5", "--device", "cpu", "--seed", "3",
             "--no-images",
             "--out", str(tmp_path / attempt)], capture_output=True, text=True, env=env, timeout=600)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        (run_dir,) = (tmp_path / attempt).iterdir()
        rows.append(_rounds_that_must_repeat(run_dir))
    # Rounds 1 and 3 audited, round 2 not: its replies are ordered by the key they carry alone.
    assert len(rows[0]) == 3 and [bool(row["leakage_rate"]) for row in rows[0]] == [True, False, True]
    assert rows[0] == rows[1]
