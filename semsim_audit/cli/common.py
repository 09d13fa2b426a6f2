"""What every command shares: the one-line error with exit code 2, the checks behind it, the common options.

An option that several commands take is declared once here as an ``Annotated`` alias; each command
gives it its own default (``dataset: DatasetOption = "photos"``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

__all__ = [
    "fail", "err_console", "at_least", "positive_number", "checkpoint_or_fail", "dataset_or_fail",
    "DatasetOption", "ModelOption", "AttackOption", "IterationsOption", "RestartsOption", "LabelsKnownOption",
    "DeviceOption", "SeedOption", "SemSimOption", "RoundsOption", "ClientsOption", "AuditedOption",
    "LocalStepsOption", "BatchSizeOption", "LrOption",
]

err_console = Console(stderr=True)

DatasetOption = Annotated[str, typer.Option(help="Dataset (see `info`); the embedded ones need no download.")]
ModelOption = Annotated[str, typer.Option(help="Victim model: lenet, convnet or resnet18.")]
AttackOption = Annotated[str, typer.Option("--attack", help="Attack from the registry.")]
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


def fail(message: str) -> NoReturn:
    """Print one line naming the problem to stderr and exit with code 2 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


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


def dataset_or_fail(name: str, train: bool = True) -> Any:
    """The dataset ``name``, or fail naming --dataset (unknown name, or files missing)."""
    # torch loads with the data module, not at start-up: `--help` stays fast.
    from semsim_audit.data import load_dataset

    try:
        return load_dataset(name, train=train)
    except ValueError as error:
        fail(f"--dataset: {error}")
