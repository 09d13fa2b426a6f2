"""`semsim-audit bench`: the privacy-utility sweep over defenses x strengths x seeds.

Each cell is one audited Flower simulation (``semsim_audit.strategies.run_audited_simulation``)
with the same data, model, attack and audit budget; only the defense, its strength and the seed
change. The defenses are the client mods of :mod:`semsim_audit.strategies.defenses`, switched on by
the cell's run config.
torch, matplotlib and Flower load inside the command only, so ``--help`` comes fast, and Flower only
once the settings are known to be good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from semsim_audit.cli.common import (
    TORCHVISION_DATASET_NAMES,
    AttackOption,
    AuditedOption,
    BatchSizeOption,
    ClientsOption,
    DataRootOption,
    DatasetOption,
    DeviceOption,
    DownloadOption,
    IterationsOption,
    LabelsKnownOption,
    LocalStepsOption,
    LrOption,
    ModelOption,
    PartitionOption,
    RestartsOption,
    RoundsOption,
    SemSimOption,
    at_least,
    checkpoint_or_fail,
    dataset_or_fail,
    fail,
    fail_run,
    positive_number,
)

__all__ = ["bench"]

_DEFENSE_HELP = ("Defense and strengths, repeatable: none | noise:SIGMA,... | prune:SHARE,... "
                 "| clip:NORM,... | quantize:sign,BITS,... | dp-fixed:NOISE_MULTIPLIER,... "
                 "| localdp:EPSILON,...")


def bench(
    defense: Annotated[list[str] | None, typer.Option(
        "--defense", help=_DEFENSE_HELP, show_default="none")] = None,
    defense_option: Annotated[list[str] | None, typer.Option(
        "--defense-option", help="Extra defense setting, repeatable: noise.clip=1.0, dp-fixed.clip=1.0, "
        "localdp.clip / localdp.sensitivity / localdp.delta=VALUE.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per defense and strength (0, 1, ..., N-1).")] = 1,
    dataset: DatasetOption = "photos",
    data_root: DataRootOption = None,
    download: DownloadOption = False,
    model: ModelOption = "lenet",
    clients: ClientsOption = 2,
    rounds: RoundsOption = 2,
    fraction_train: Annotated[float, typer.Option(help="Share of clients sampled per round.")] = 1.0,
    local_steps: LocalStepsOption = 1,
    batch_size: BatchSizeOption = 1,
    lr: LrOption = 0.01,
    samples_per_client: Annotated[int | None, typer.Option(
        help="Cap on each client's training images (smaller = faster).")] = None,
    partition: PartitionOption = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (with --partition dirichlet).")] = 0.5,
    attack: AttackOption = "inverting-gradients",
    iterations: IterationsOption = 200,
    restarts: RestartsOption = 1,
    audited: AuditedOption = 2,
    every: Annotated[int, typer.Option(help="Audit rounds 1, 1+N, 1+2N, ...")] = 1,
    labels_known: LabelsKnownOption = False,
    device: DeviceOption = "auto",
    semsim_checkpoint: SemSimOption = None,
    save_images: Annotated[bool, typer.Option(help="Keep every cell's reconstructions as PNG.")] = False,
    out: Annotated[Path, typer.Option(
        help="Sweep folder; run again with the same settings to resume (finished cells are skipped).")] = (
        Path("runs/bench")),
) -> None:
    """Sweep defenses x strengths x seeds: accuracy lost against leakage saved, one audited run per cell."""
    # matplotlib (the sweep's plot) loads only now, not at start-up.
    from semsim_audit.bench import (
        Cell,
        CellResult,
        SweepState,
        aggregate,
        cell_grid,
        parse_defense,
        parse_defense_option,
        results_table,
        run_sweep,
        write_outputs,
    )

    try:
        specs = [parse_defense(spec) for spec in (defense or ["none"])]
        options = dict(parse_defense_option(text) for text in (defense_option or []))
        cells = cell_grid(specs, list(range(seeds)) if seeds >= 1 else [])
    except ValueError as error:
        fail(str(error))
    for value, option in ((clients, "--clients"), (rounds, "--rounds"), (local_steps, "--local-steps"),
                          (batch_size, "--batch-size"), (iterations, "--iterations"),
                          (restarts, "--restarts"), (audited, "--audited"), (every, "--every")):
        at_least(value, 1, option)
    if samples_per_client is not None:
        at_least(samples_per_client, 1, "--samples-per-client")
    if not 0.0 < fraction_train <= 1.0:
        fail(f"--fraction-train must lie in (0, 1], got {fraction_train:g}")
    positive_number(lr, "--lr")
    checkpoint_or_fail(semsim_checkpoint)

    # torch loads with the attacks behind AuditConfig, not at start-up.
    from semsim_audit.config import AuditConfig

    audit_fields: dict[str, Any] = {
        "attack": attack, "attack_config": {"iterations": iterations, "restarts": restarts},
        "every": every, "clients": audited, "device": device,
        "threat_model": "labels_known" if labels_known else "labels_recovered",
        "semsim_checkpoint": None if semsim_checkpoint is None else str(semsim_checkpoint),
    }
    try:
        AuditConfig(**audit_fields)
    except ValidationError as error:
        problem = error.errors()[0]
        message = str(problem["msg"]).removeprefix("Value error, ")
        fail(f"--{str(problem['loc'][0]).replace('_', '-')}: {message}")
    # Loaded once for every cell. A folder has no test split: cells evaluate on its training images.
    train_split = dataset_or_fail(dataset, root=data_root, download=download)
    test_split = None if dataset == "folder" else dataset_or_fail(dataset, train=False, root=data_root,
                                                                   download=download)
    data = {"dataset": train_split, "test_dataset": test_split}

    simulation = {"model": model, "num_clients": clients, "rounds": rounds,
                  "fraction_train": fraction_train, "local_steps": local_steps, "batch_size": batch_size,
                  "lr": lr, "partition": partition, "alpha": alpha, "samples_per_client": samples_per_client}
    settings = {"dataset": dataset, **simulation, "audit": audit_fields, "defense_options": options,
                "save_images": save_images}
    if data_root is not None and dataset in (*TORCHVISION_DATASET_NAMES, "folder"):
        settings["data_root"] = str(data_root.resolve())  # other files, other sweep
    state = SweepState(out, settings)
    try:
        state.open()
    except ValueError as error:
        fail(str(error))

    # Flower (and Ray) load only here, once the settings are known to be good.
    from semsim_audit.strategies.defenses import defense_mods, dp_fixed_strategy
    from semsim_audit.strategies.simulation import run_audited_simulation

    def run_cell(cell: Cell, folder: Path) -> Any:
        run_config = cell.run_config(options)
        audit = AuditConfig(**audit_fields, seed=cell.seed, out_dir=folder, save_images=save_images)
        extra: dict[str, Any] = {}
        if cell.defense == "dp-fixed":
            # Flower's client-side fixed clipping is a pair: this server wrapper sends the clipping
            # norm, the client's fixedclipping_mod clips; the wrapper's noise goes on the aggregate.
            sampled = max(1, int(clients * fraction_train))
            extra["wrap_strategy"] = lambda inner: dp_fixed_strategy(inner, run_config, sampled)
        return run_audited_simulation(**data, **simulation, seed=cell.seed, audit=audit,
                                      client_mods=defense_mods(), run_config=run_config, **extra)

    console = Console()
    console.print(f"[bold]{len(cells)} cells[/] ({len(specs)} defense spec(s) x strengths x {seeds} seed(s)) "
                  f"-> {out}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)

    def on_done(result: CellResult, skipped: bool) -> None:
        note = "skipped (finished before)" if skipped else (
            f"[green]ok[/] in {result.seconds:.0f}s" if result.status == "ok"
            else f"[bold red]failed[/]: {result.reason}")
        progress.console.print(f"  {result.cell.label} seed {result.seed}: {note}", highlight=False)
        progress.advance(task)

    with progress:
        task = progress.add_task("sweep", total=len(cells))
        results = run_sweep(cells, state, run_cell, on_done=on_done)

    rows = aggregate(results)
    console.print(results_table(rows))
    files = write_outputs(rows, results, settings, out)
    failed = [r for r in results if r.status == "failed"]
    console.print("files: " + ", ".join(str(path) for path in files.values()))
    if failed:
        fail_run(f"{len(failed)} of {len(results)} cell(s) failed; run the same command again to retry them")
