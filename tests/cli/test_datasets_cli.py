"""Every dataset the README lists, from the command line, on tiny real files in torchvision's formats
and a user's class folder; the errors of missing and malformed data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from semsim_audit.cli.main import app
from semsim_audit.report import PrivacyReport, read_jsonl

runner = CliRunner()
# Attack settings that keep each run to seconds: what is under test is the data path.
QUICK = ["--iterations", "2", "--device", "cpu"]


def _attack(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["attack", *QUICK, *args], terminal_width=200, env=env)


@pytest.mark.parametrize(("dataset", "folder", "channels"), [
    ("cifar10", "", 3), ("cifar100", "", 3), ("mnist", "", 1), ("fashionmnist", "", 1),
    ("folder", "mine", 3)])
def test_attack_runs_on_each_dataset_from_its_files(data_root: Path, tmp_path: Path, dataset: str,
                                                    folder: str, channels: int) -> None:
    result = _attack("--dataset", dataset, "--data-root", str(data_root / folder), "--index", "1",
                     "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    assert "inverting-gradients: 1 image(s)" in result.output and "leakage rate" in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = PrivacyReport.model_validate_json((run_dir / "report.json").read_text())
    assert report.config["dataset"] == dataset
    original = Image.open(run_dir / "images" / "round-1" / "client-0" / "original-0.png")
    assert original.size == (32, 32) and len(original.getbands()) == channels


def test_the_data_root_may_come_from_the_environment(data_root: Path) -> None:
    result = _attack("--dataset", "mnist", env={"SEMSIM_AUDIT_DATA_ROOT": str(data_root)})
    assert result.exit_code == 0, result.output


def test_download_uses_files_already_there(data_root: Path) -> None:
    # The tiny files fail torchvision's checksums: had it downloaded, CIFAR-100 would have 50,000 images.
    result = _attack("--dataset", "cifar100", "--data-root", str(data_root), "--download", "--index", "3")
    assert result.exit_code == 0, result.output
    result = _attack("--dataset", "cifar100", "--data-root", str(data_root), "--download", "--index", "4")
    assert result.exit_code == 2 and "runs past the 4 images of 'cifar100'" in result.stderr


def _error(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_command_line_mistakes_about_data_exit_2(data_root: Path, tmp_path: Path) -> None:
    no_env = {"SEMSIM_AUDIT_DATA_ROOT": None}
    _error(runner.invoke(app, ["attack", "--dataset", "folder"], env=no_env), 2,
           "--dataset folder needs --data-root DIR")
    _error(_attack("--dataset", "folder", "--data-root", str(tmp_path / "nowhere")), 2,
           f"--data-root: no folder at {tmp_path / 'nowhere'}")
    (tmp_path / "file").write_text("x")
    _error(_attack("--dataset", "cifar10", "--data-root", str(tmp_path / "file")), 2, "is not a folder")
    _error(runner.invoke(app, ["demo", "--dataset", "folder"], env=no_env), 2, "--dataset folder needs")
    _error(runner.invoke(app, ["bench", "--dataset", "folder", "--out", str(tmp_path / "sweep")], env=no_env),
           2, "--dataset folder needs")


def test_data_that_cannot_be_loaded_exits_1_naming_the_file(data_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _error(_attack("--dataset", "cifar10", "--data-root", str(empty)), 1,
           f"cifar10: files not found under {empty} (cifar-10-batches-py/batches.meta is missing); "
           "pass download=True (CLI: --download)")
    (data_root / "mine" / "dogs" / "broken.png").write_bytes(b"not a png")
    _error(_attack("--dataset", "folder", "--data-root", str(data_root / "mine")), 1,
           f"folder: cannot read image {data_root / 'mine' / 'dogs' / 'broken.png'}: not an image file")
    _error(_attack("--dataset", "folder", "--data-root", str(empty)), 1,
           f"folder: {empty} has no class sub-folders")
    _error(runner.invoke(app, ["demo", "--dataset", "mnist", "--data-root", str(empty)]), 1,
           "mnist: files not found")


@pytest.mark.slow
def test_demo_audits_a_class_folder_end_to_end_and_check_gates_it(data_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SEMSIM_AUDIT_DATA_ROOT", None)
    completed = subprocess.run(
        [sys.executable, "-m", "semsim_audit.cli.main", "demo", "--dataset", "folder",
         "--data-root", str(data_root / "mine"), "--rounds", "1", "--clients", "2", "--audited", "1",
         "--iterations", "3", "--device", "cpu", "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = read_jsonl(run_dir / "report.jsonl")
    (record,) = report.rounds
    (audit,) = record.clients
    assert audit.status == "ok", audit.reason
    assert record.accuracy is not None and (run_dir / "report.html").is_file()
    assert report.config.get("evaluated_on", "").startswith("the training dataset")

    # The gate on this real run folder: a limit above every possible value passes, one below fails.
    passed = runner.invoke(app, ["check", str(run_dir), "--max-leakage", "1", "--min-mean-semsim", "0"])
    assert passed.exit_code == 0, passed.output
    failed = runner.invoke(app, ["check", str(run_dir), "--min-mean-semsim", "2"])
    assert failed.exit_code == 1 and "FAIL round 1: mean SemSim" in failed.stdout, failed.output
