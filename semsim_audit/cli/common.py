"""What every command shares: the one-line errors and their exit codes, the checks behind them, the options.

An option that several commands take is declared once here as an ``Annotated`` alias; each command
gives it its own default (``dataset: DatasetOption = "photos"``).

Exit codes: 0 done, 1 the work failed (a run, an attack, a file that cannot be read, a gate that is
not met), 2 the command line is wrong (unknown option or value, value out of range, missing path).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from semsim_audit.report import PrivacyReport, read_jsonl

__all__ = [
    "fail", "fail_run", "USAGE_ERROR", "RUN_FAILED", "err_console", "at_least", "positive_number",
    "checkpoint_or_fail", "dataset_or_fail", "report_or_fail",
    "DATASET_NAMES", "TORCHVISION_DATASET_NAMES", "MODEL_NAMES", "ATTACK_NAMES", "PARTITION_NAMES",
    "DATA_ROOT_ENV", "DatasetOption", "DataRootOption", "DownloadOption", "ModelOption", "AttackOption",
    "PartitionOption", "IterationsOption", "RestartsOption", "LabelsKnownOption", "DeviceOption",
    "SeedOption", "SemSimOption", "RoundsOption", "ClientsOption", "AuditedOption", "LocalStepsOption",
    "BatchSizeOption", "LrOption", "TensorBoardOption", "tensorboard_sink_or_fail",
]

USAGE_ERROR = 2
RUN_FAILED = 1

err_console = Console(stderr=True)

# The registries' names, listed here because the registries' modules (semsim_audit.data.DATASETS,
# .models.MODELS, .attacks.ATTACKS, .data.PARTITIONS) import torch, and `--help` and option parsing
# must not wait for it. A test checks that each list equals its registry.
DATASET_NAMES: tuple[str, ...] = ("photos", "faces", "cifar10", "cifar100", "mnist", "fashionmnist", "folder")
TORCHVISION_DATASET_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashionmnist")
MODEL_NAMES: tuple[str, ...] = ("lenet", "convnet", "resnet18")
ATTACK_NAMES: tuple[str, ...] = ("dlg", "idlg", "inverting-gradients", "gradinversion", "fedavg")
PARTITION_NAMES: tuple[str, ...] = ("iid", "dirichlet")
DATA_ROOT_ENV = "SEMSIM_AUDIT_DATA_ROOT"  # semsim_audit.data.DATA_ROOT_ENV


def _choice(names: tuple[str, ...]) -> click.Choice:
    return click.Choice(names, case_sensitive=False)


DatasetOption = Annotated[str, typer.Option(
    click_type=_choice(DATASET_NAMES),
    help="photos, faces: embedded. cifar10, cifar100, mnist, fashionmnist: torchvision's files in "
         "--data-root. folder: your images in --data-root, one sub-folder per class.")]
DataRootOption = Annotated[Path | None, typer.Option(
    "--data-root", envvar=DATA_ROOT_ENV, show_envvar=True,
    help="The dataset's files: torchvision's layout (default ~/.cache/semsim-audit/data), or for "
         "folder the folder of class sub-folders.")]
DownloadOption = Annotated[bool, typer.Option(
    "--download", help="Fetch a torchvision dataset into --data-root if its files are missing (internet).")]
ModelOption = Annotated[str, typer.Option(click_type=_choice(MODEL_NAMES), help="Victim model.")]
AttackOption = Annotated[str, typer.Option("--attack", click_type=_choice(ATTACK_NAMES),
                                           help="Attack from the registry.")]
PartitionOption = Annotated[str, typer.Option(
    click_type=_choice(PARTITION_NAMES), help="How the training set is split among clients.")]
IterationsOption = Annotated[int, typer.Option(help="Optimisation steps of each attack.")]
RestartsOption = Annotated[int, typer.Option(help="Independent attack restarts; the best match is kept.")]
LabelsKnownOption = Annotated[bool, typer.Option(
    help="Give the attacker the true labels (stronger threat model).")]
DeviceOption = Annotated[str, typer.Option(help="Where attacks run: auto, cpu or cuda[:N].")]
SeedOption = Annotated[int, typer.Option(
    help="Seed of the data split, the victim model's weights and the attacks.")]
SemSimOption = Annotated[Path | None, typer.Option(
    "--semsim", help="SemSim checkpoint file (default: the one shipped in the package).")]
RoundsOption = Annotated[int, typer.Option(help="Federated rounds.")]
ClientsOption = Annotated[int, typer.Option(help="Simulated clients.")]
AuditedOption = Annotated[int, typer.Option(help="Clients attacked per audited round.")]
LocalStepsOption = Annotated[int, typer.Option(help="Local SGD steps per round (1 = FedSGD).")]
BatchSizeOption = Annotated[int, typer.Option(help="Local batch size: images each attack must recover.")]
LrOption = Annotated[float, typer.Option(help="Local learning rate.")]
TensorBoardOption = Annotated[Path | None, typer.Option(
    "--tensorboard", metavar="DIR",
    help="Also log every round to TensorBoard event files in DIR: scalars and reconstruction grids "
         "(needs the tensorboard extra).")]


def fail(message: str) -> NoReturn:
    """Bad input: print one line naming the problem to stderr and exit with code 2 (no traceback)."""
    _exit(message, USAGE_ERROR)


def fail_run(message: str) -> NoReturn:
    """The work failed (a run, an attack, an unreadable file): one line to stderr, exit code 1."""
    _exit(message, RUN_FAILED)


def _exit(message: str, code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def at_least(value: float, minimum: float, option: str) -> None:
    """Fail unless ``value`` >= ``minimum``."""
    if value < minimum:
        fail(f"{option} must be >= {minimum}, got {value}")


def positive_number(value: float, option: str) -> None:
    """Fail unless ``value`` is a finite number > 0."""
    if not (value > 0 and math.isfinite(value)):
        fail(f"{option} must be a positive number, got {value}")


def checkpoint_or_fail(path: Path | None) -> None:
    """Fail when a SemSim checkpoint was given but is not a file (None: the packaged one)."""
    if path is not None and not path.is_file():
        fail(f"--semsim: no checkpoint file at {path}")


def dataset_or_fail(name: str, *, train: bool = True, root: Path | None = None,
                    download: bool = False) -> Any:
    """The dataset ``name``: exit 2 for a bad command line, 1 when its files cannot be loaded."""
    downloadable = name in TORCHVISION_DATASET_NAMES and download
    if name == "folder" and root is None:
        fail(f"--dataset folder needs --data-root DIR (or ${DATA_ROOT_ENV}): a folder with one "
             "sub-folder of images per class")
    if root is not None and name in (*TORCHVISION_DATASET_NAMES, "folder"):
        if root.exists() and not root.is_dir():
            fail(f"--data-root: {root} is not a folder")
        if not root.exists() and not downloadable:
            fail(f"--data-root: no folder at {root}")
    # torch loads with the data module, not at start-up: `--help` stays fast.
    from semsim_audit.data import DatasetUnavailable, load_dataset

    try:
        return load_dataset(name, train=train, root=root, download=download)
    except DatasetUnavailable as error:
        fail_run(str(error))
    except ValueError as error:  # an unknown name, where the caller skipped the option's choices
        fail(f"--dataset: {error}")


def tensorboard_sink_or_fail(log_dir: Path, run_dir: Path | None = None) -> Any:
    """A TensorBoard sink writing into ``log_dir`` (images from ``run_dir``, default the report's own);
    exit 2 when ``log_dir`` is a file or the tensorboard extra is missing."""
    if log_dir.exists() and not log_dir.is_dir():
        fail(f"--tensorboard: {log_dir} exists and is not a folder")
    # torch (and tensorboard) load with the sink, not at start-up.
    from semsim_audit.views.tensorboard import TensorBoardSink

    try:
        return TensorBoardSink(log_dir, run_dir=run_dir)
    except ImportError as error:
        fail(f"--tensorboard: {error}")


def report_or_fail(path: Path) -> tuple[PrivacyReport, Path]:
    """The report in ``path`` (a run folder, a report.jsonl or a report.json) and its run folder.

    A path that is not there, or a folder without a report, is a bad argument (exit 2); a report
    that cannot be read is a failure (exit 1).
    """
    if path.is_dir():
        run_dir = path
        journal, whole = path / "report.jsonl", path / "report.json"
        if journal.is_file():
            path = journal
        elif whole.is_file():
            path = whole
        else:
            fail(f"{run_dir} holds neither report.jsonl nor report.json (is it a run folder?)")
    elif not path.is_file():
        fail(f"no such file or folder: {path}")
    run_dir = path.parent
    try:
        if path.suffix == ".json":
            return PrivacyReport.model_validate_json(path.read_text(encoding="utf-8")), run_dir
        return read_jsonl(path), run_dir
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        fail_run(f"{path}: not a semsim-audit report ({where}: {first['msg']})")
    except UnicodeDecodeError:  # before ValueError, its base class
        fail_run(f"{path}: not a text file")
    except ValueError as error:  # read_jsonl names the file and line itself
        fail_run(str(error))
    except OSError as error:
        fail_run(f"cannot read {path}: {error.strerror or error}")
