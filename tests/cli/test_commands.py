"""`semsim-audit demo / report / attack`: help, version, one-line errors with exit codes 2 (the command
line) and 1 (the work), re-rendering a run."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import semsim_audit
from semsim_audit.cli.common import ATTACK_NAMES, DATASET_NAMES, MODEL_NAMES, PARTITION_NAMES
from semsim_audit.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["demo"], ["report"], ["attack"], ["info"], ["bench"], ["check"],
                                     ["semsim", "train"], ["annotate", "export"]])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(command: list[str], flag: str) -> None:
    result = runner.invoke(app, [*command, flag])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version_is_the_installed_one() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"semsim-audit {importlib.metadata.version('semsim-audit')}\n"
    assert semsim_audit.__version__ == importlib.metadata.version("semsim-audit")


def test_the_choices_listed_without_torch_are_the_registries() -> None:
    from semsim_audit.attacks import ATTACKS
    from semsim_audit.cli.common import DATA_ROOT_ENV as CLI_DATA_ROOT_ENV
    from semsim_audit.cli.common import TORCHVISION_DATASET_NAMES
    from semsim_audit.data import DATA_ROOT_ENV, DATASETS, PARTITIONS, TORCHVISION_DATASETS
    from semsim_audit.models import MODELS

    assert DATASET_NAMES == DATASETS and TORCHVISION_DATASET_NAMES == TORCHVISION_DATASETS
    assert MODEL_NAMES == tuple(MODELS) and ATTACK_NAMES == tuple(ATTACKS) and PARTITION_NAMES == PARTITIONS
    assert CLI_DATA_ROOT_ENV == DATA_ROOT_ENV


@pytest.mark.parametrize(("command", "option", "names"), [
    ("demo", "--dataset", DATASET_NAMES), ("attack", "--model", MODEL_NAMES),
    ("demo", "--attack", ATTACK_NAMES), ("bench", "--dataset", DATASET_NAMES),
    ("bench", "--partition", PARTITION_NAMES)])
def test_help_lists_the_choices(command: str, option: str, names: tuple[str, ...]) -> None:
    output = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    assert f"[{'|'.join(names)}]" in output, output


def test_help_starts_without_torch_or_flower() -> None:
    code = ("import sys; from semsim_audit.cli.main import app; from typer.testing import CliRunner; "
            "[CliRunner().invoke(app, [c, '--help']) "
            " for c in ('demo', 'attack', 'bench', 'check', 'report')]; "
            "print('torch' in sys.modules, 'flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_demo_help_lists_its_options() -> None:
    output = runner.invoke(app, ["demo", "--help"], terminal_width=200).output
    for option in ("--dataset", "--model", "--attack", "--rounds", "--clients", "--audited", "--iterations",
                   "--device", "--out", "--images", "--no-images"):
        assert option in output


def _bad(args: list[str], message: str, code: int = 2) -> None:
    result = runner.invoke(app, args, terminal_width=400)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["demo", "--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["demo", "--clients", "2", "--audited", "3"], "--audited 3 is more than --clients 2"),
    (["demo", "--iterations", "-5"], "--iterations must be >= 1, got -5"),
    (["demo", "--lr", "0"], "--lr must be a positive number"),
    (["demo", "--attack", "nope"], "Invalid value for '--attack': 'nope' is not one of 'dlg', 'idlg',"),
    (["demo", "--dataset", "nope"], "Invalid value for '--dataset': 'nope' is not one of 'photos', "),
    (["demo", "--model", "nope"], "Invalid value for '--model': 'nope' is not one of 'lenet', "),
    (["demo", "--rounds", "two"], "Invalid value for '--rounds': 'two' is not a valid integer. "
                                  "Try 'semsim-audit demo --help'."),
    (["attack", "--no-such-option"], "No such option"),
    (["bench", "--partition", "random"], "Invalid value for '--partition': 'random' is not one of 'iid',"),
    (["check"], "Missing argument 'RUN'"),
    (["demo", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["demo", "--semsim", "missing.safetensors"], "--semsim: no checkpoint file at missing.safetensors"),
    pytest.param(["demo", "--clients", "700"],
                 "--clients 700 leave 0 image(s) per client, fewer than --batch-size 1",
                 marks=pytest.mark.slow),
    (["attack", "--samples", "0"], "--samples must be >= 1, got 0"),
    pytest.param(["attack", "--index", "100000"],
                 "--index 100000 + --samples 1 runs past the 640 images of 'photos'", marks=pytest.mark.slow),
    (["attack", "--attack", "nope"], "Invalid value for '--attack'"),
])
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    _bad(args, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
def test_demo_on_cuda_without_cuda_is_refused() -> None:
    _bad(["demo", "--device", "cuda"], "CUDA is not available on this machine")


def test_demo_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    _bad(["demo", "--out", str(tmp_path / "taken")], "is not a folder")


def test_report_of_missing_paths_is_a_usage_error(tmp_path: Path) -> None:
    _bad(["report", str(tmp_path / "nowhere")], "no such file or folder")
    _bad(["report", str(tmp_path)], "holds neither report.jsonl nor report.json")


def test_report_that_cannot_be_read_is_a_failure(tmp_path: Path) -> None:
    garbage = tmp_path / "report.jsonl"
    garbage.write_text('{"type": "run"}\nnot json\n{"type": "round", "round": 1}\n')
    _bad(["report", str(garbage)], "report.jsonl:2: not valid JSON", code=1)
    foreign = tmp_path / "report.json"
    foreign.write_text('{"rounds": [{"round": "first"}]}')
    _bad(["report", str(foreign)], "not a semsim-audit report (rounds.0.round:", code=1)


def test_report_rerenders_a_killed_run(sample_run_dir: Path) -> None:
    journal = sample_run_dir / "report.jsonl"
    journal.write_text(journal.read_text() + '{"type": "round", "round": 4, "acc')
    result = runner.invoke(app, ["report", str(sample_run_dir), "--no-svg"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2 (1 fail)" in result.output and "worst round   2" in result.output
    html = (sample_run_dir / "report.html").read_text()
    assert "Round 3, client 22" in html and "Round 4" not in html
    assert (sample_run_dir / "rounds.csv").read_text().count("\n") == 4
    assert not (sample_run_dir / "console.svg").exists()


def test_report_into_another_folder_carries_the_images(sample_run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    result = runner.invoke(app, ["report", str(sample_run_dir / "report.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "console.svg").is_file()
    assert (out / "images" / "round-1" / "client-11" / "original-0.png").is_file()
    assert "not saved" not in (out / "report.html").read_text()


def test_cli_does_not_import_flower_until_a_simulation_runs() -> None:
    code = ("import sys; from semsim_audit.cli.main import app; "
            "from typer.testing import CliRunner; CliRunner().invoke(app, ['report', '--help']); "
            "print('flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_report_of_a_binary_file_fails_cleanly(tmp_path: Path) -> None:
    binary = tmp_path / "report.jsonl"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    _bad(["report", str(binary)], "not a text file", code=1)
