"""`--tensorboard DIR` on `demo` and `bench`, and scores.csv from `semsim-audit report`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from semsim_audit.cli.main import app
from semsim_audit.report import read_jsonl
from semsim_audit.views.tensorboard import IMAGE_TAG

runner = CliRunner()


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_help_lists_the_tensorboard_option(command: str) -> None:
    output = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    assert "--tensorboard" in output and "(needs the tensorboard extra)" in output, output


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_a_tensorboard_dir_that_is_a_file_exits_2_before_anything_runs(command: str, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "out"
    result = runner.invoke(app, [command, "--tensorboard", str(tmp_path / "taken"), "--out", str(out)],
                           terminal_width=400)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --tensorboard:") and "is not a folder" in result.stderr
    assert not out.exists()  # no run or sweep folder was made


def test_demo_without_the_tensorboard_extra_exits_2_naming_it(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "runs"
    result = runner.invoke(app, ["demo", "--tensorboard", str(tmp_path / "tb"), "--out", str(out)],
                           terminal_width=400)
    assert result.exit_code == 2, result.output
    assert 'pip install "semsim-audit[tensorboard]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_report_rerender_writes_one_scores_row_per_reconstruction(sample_run_dir: Path) -> None:
    (sample_run_dir / "scores.csv").unlink(missing_ok=True)
    result = runner.invoke(app, ["report", str(sample_run_dir)], terminal_width=200)
    assert result.exit_code == 0, result.output
    with (sample_run_dir / "scores.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    report = read_jsonl(sample_run_dir / "report.jsonl")
    scores = [(r.round, a.node_id, s) for r in report.rounds for a in r.clients for s in a.scores]
    assert len(rows) == len(scores) == 8  # the failed audit of round 2 has none
    assert [(int(row["round"]), int(row["client"]), float(row["semsim"])) for row in rows] == [
        (round_number, node, score.semsim) for round_number, node, score in scores]


@pytest.mark.slow
def test_demo_logs_every_round_to_tensorboard(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    board = tmp_path / "tb"
    completed = subprocess.run(
        [sys.executable, "-m", "semsim_audit.cli.main", "demo", "--rounds", "2", "--clients", "2",
         "--audited", "1", "--every", "1", "--iterations", "3", "--device", "cpu",
         "--out", str(tmp_path / "runs"),
         "--tensorboard", str(board)],
        capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = read_jsonl(run_dir / "report.jsonl")
    events = EventAccumulator(str(board), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("utility/accuracy")] == [1, 2]
    assert [e.value for e in events.Scalars("leakage/rate")] == pytest.approx(
        [r.leakage_rate for r in report.rounds])
    for record in report.rounds:
        (audit,) = record.clients
        assert record.round in [e.step for e in events.Images(IMAGE_TAG.format(node_id=audit.node_id))]
    assert (run_dir / "scores.csv").read_text().count("\n") == 1 + sum(
        len(a.scores) for r in report.rounds for a in r.clients)
