"""`semsim-audit check RUN`: the CI gate passes (0) or lists the offending rounds and fails (1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from semsim_audit.cli.main import app
from semsim_audit.report import (
    ClientAudit,
    JsonlSink,
    PrivacyReport,
    ReconstructionScore,
    RoundRecord,
    read_jsonl,
)

runner = CliRunner()


def _write_run(run_dir: Path, rounds: list[list[tuple[float, bool]] | str | None]) -> Path:
    """A run folder whose round r has one client with the given (SemSim, recognizable) scores,
    or a failed audit ("failed"), or no audit (None)."""
    report = PrivacyReport(semsim={"annotator": "proxy", "threshold": 0.5})
    journal = JsonlSink(run_dir / "report.jsonl")
    journal.start(report)
    for number, scores in enumerate(rounds, start=1):
        if scores is None:
            clients = []
        elif scores == "failed":
            clients = [ClientAudit(node_id=7, attack="dlg", status="failed", reason="diverged (NaN loss)")]
        else:
            clients = [ClientAudit(node_id=7, attack="dlg", status="ok", num_images=len(scores), scores=[
                ReconstructionScore(original_index=i, semsim=semsim, recognizable=recognizable)
                for i, (semsim, recognizable) in enumerate(scores)])]
        record = RoundRecord(round=number, accuracy=0.5, clients=clients).summarise()
        report.add_round(record)
        journal.write_round(record)
    journal.close(report)
    return run_dir


def _check(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["check", *args], terminal_width=400)
    return result.exit_code, result.stdout, result.stderr


QUIET = [(1.2, False), (1.0, False), (0.9, False), (1.1, False)]   # leakage 0%, mean SemSim 1.05
LEAKY = [(0.2, True), (0.3, True), (0.9, False), (1.0, False)]     # leakage 50%, mean SemSim 0.6


def test_a_run_within_the_limits_passes(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", [QUIET, None, QUIET])
    code, out, err = _check(str(run), "--max-leakage", "0.05", "--min-mean-semsim", "0.8")
    assert code == 0, out + err
    assert "ok: 2 audited round(s) within --max-leakage 5.0% and --min-mean-semsim 0.800" in out
    assert "proxy checkpoint, threshold 0.500" in out


def test_a_leaking_round_fails_the_gate_and_is_named(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", [QUIET, LEAKY, QUIET])
    code, out, err = _check(str(run), "--max-leakage", "0.05")
    assert code == 1
    assert out.splitlines() == ["FAIL round 2: leakage rate 50.0% > --max-leakage 5.0%"]
    assert err.startswith("error: 1 of 3 audited round(s) break --max-leakage 5.0%")
    assert _check(str(run), "--max-leakage", "0.5")[0] == 0  # 50% is not above 50%


def test_min_mean_semsim_fails_rounds_whose_reconstructions_are_too_close(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", [LEAKY, QUIET])
    code, out, _ = _check(str(run / "report.jsonl"), "--min-mean-semsim", "0.8")
    assert code == 1
    assert out.splitlines() == ["FAIL round 1: mean SemSim 0.600 < --min-mean-semsim 0.800 "
                                "(reconstructions closer to the originals than allowed)"]
    assert _check(str(run), "--min-mean-semsim", "0.6")[0] == 0


def test_a_round_whose_audits_all_failed_fails_unless_allowed(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", [QUIET, "failed"])
    code, out, _ = _check(str(run), "--max-leakage", "0.05")
    assert code == 1
    assert "FAIL round 2: no leakage rate to check (failed: diverged (NaN loss))" in out
    assert _check(str(run), "--max-leakage", "0.05", "--allow-unscored")[0] == 0


def test_a_run_with_nothing_scored_fails(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", [None, "failed"])
    code, _, err = _check(str(run), "--max-leakage", "0.05", "--allow-unscored")
    assert code == 1 and "nothing to check" in err


def test_the_whole_report_json_is_read_too(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", [LEAKY])
    (run / "report.json").write_text(read_jsonl(run / "report.jsonl").model_dump_json())
    (run / "report.jsonl").unlink()
    code, out, _ = _check(str(run), "--max-leakage", "0.05")
    assert code == 1 and "FAIL round 1" in out


@pytest.mark.parametrize(("args", "message"), [
    ([], "give a limit: --max-leakage RATE and/or --min-mean-semsim DISTANCE"),
    (["--max-leakage", "5"], "--max-leakage must lie in [0, 1]"),
    (["--min-mean-semsim", "-0.1"], "--min-mean-semsim must lie in [0, 2]"),
    (["--max-leakage", "low"], "Invalid value for '--max-leakage'"),
])
def test_bad_limits_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    run = _write_run(tmp_path / "run", [QUIET])
    code, _, err = _check(str(run), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_paths_and_unreadable_reports(tmp_path: Path) -> None:
    code, _, err = _check(str(tmp_path / "nowhere"), "--max-leakage", "0")
    assert code == 2 and "no such file or folder" in err
    broken = tmp_path / "report.jsonl"
    broken.write_text("{not json\n{}\n")
    code, _, err = _check(str(broken), "--max-leakage", "0")
    assert code == 1 and "report.jsonl:1: not valid JSON" in err
