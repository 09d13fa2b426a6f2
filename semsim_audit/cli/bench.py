"""`semsim-audit bench`: the privacy-utility sweep over defenses x strengths x seeds.

Each cell is one audited Flower simulation (``semsim_audit.strategies.run_audited_simulation``)
with the same data, model, attacks and audit budget; only the defense, its strength and the seed
change. The defenses are the client mods of :mod:`semsim_audit.strategies.defenses`, switched on by
the cell's run config. With ``--attack-only`` (and the DLG presets) a cell attacks single-image
gradients of the untrained model instead, without training. torch, matplotlib and Flower load
inside the command only, so ``--help`` comes fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from click.core import ParameterSource
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from semsim_audit.cli.common import (
    TORCHVISION_DATASET_NAMES,
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
    TensorBoardOption,
    at_least,
    checkpoint_or_fail,
    dataset_or_fail,
    fail,
    fail_run,
    positive_number,
    tensorboard_sink_or_fail,
)
from semsim_audit.report import format_value

__all__ = ["bench"]

_DEFENSE_HELP = ("Defense and strengths, repeatable: none | noise:SIGMA,... | gaussian:VARIANCE,... "
                 "| laplacian:VARIANCE,... | prune:SHARE,... | clip:NORM,... | quantize:sign,BITS,... "
                 "| dp-fixed:NOISE_MULTIPLIER,... | localdp:EPSILON,...")
_ATTACK_HELP = ("Attack, repeatable: NAME[+mask][:ITERATIONS], NAME from the registry (dlg, idlg, "
                "inverting-gradients, ...); +mask matches only the coordinates the update carries (the "
                "adaptive attack on pruning); ITERATIONS defaults to --iterations. A cell's leakage is "
                "the highest among its attacks.")
# The sweep's defaults (semsim_audit.bench.FEDERATION, DEFAULT_DEFENSES, DEFAULT_ATTACKS, PRESETS),
# written out here because importing semsim_audit.bench loads torch, and --help must not wait for it.
# A test checks that they are equal.
DEFAULT_DEFENSES = ("none", "noise:0.001,0.01,0.3", "prune:0.5,0.9,0.99")
DEFAULT_ATTACKS = ("inverting-gradients", "idlg:30")
PRESET_NAMES = ("dlg-defenses", "dlg-defenses-cpu")


def bench(
    ctx: typer.Context,
    preset: Annotated[str | None, typer.Option(
        click_type=click.Choice(PRESET_NAMES),
        help="A named sweep: dlg-defenses reproduces the DLG paper's defense experiment (single images, "
             "noise variance 1e-4..1e-1, pruning 1%..70%, DLG and iDLG at 300 L-BFGS iterations; "
             "GPU-sized), dlg-defenses-cpu the same at a CPU budget. Options you give win.")] = None,
    defense: Annotated[list[str] | None, typer.Option(
        "--defense", help=_DEFENSE_HELP, show_default=" ".join(DEFAULT_DEFENSES))] = None,
    defense_option: Annotated[list[str] | None, typer.Option(
        "--defense-option", help="Extra defense setting, repeatable: noise.clip=1.0, dp-fixed.clip=1.0, "
        "localdp.clip / localdp.sensitivity / localdp.delta=VALUE.")] = None,
    attack: Annotated[list[str] | None, typer.Option(
        "--attack", help=_ATTACK_HELP, show_default=" ".join(DEFAULT_ATTACKS))] = None,
    adaptive: Annotated[bool, typer.Option(
        help="Add each defense's known adaptive attack to its cells "
             "(prune: inverting-gradients+mask).")] = True,
    seeds: Annotated[int, typer.Option(help="Seeds per defense and strength (0, 1, ..., N-1).")] = 2,
    dataset: DatasetOption = "photos",
    data_root: DataRootOption = None,
    download: DownloadOption = False,
    model: ModelOption = "lenet",
    uniform_init: Annotated[bool, typer.Option(
        help="LeNet only: DLG's uniform(-0.5, 0.5) weights, the setting of the DLG paper.")] = True,
    clients: ClientsOption = 16,
    rounds: RoundsOption = 40,
    fraction_train: Annotated[float, typer.Option(help="Share of clients sampled per round.")] = 1.0,
    local_steps: LocalStepsOption = 1,
    batch_size: BatchSizeOption = 1,
    lr: LrOption = 0.1,
    samples_per_client: Annotated[int | None, typer.Option(
        help="Cap on each client's training images (smaller = faster).")] = None,
    partition: PartitionOption = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (with --partition dirichlet).")] = 0.5,
    iterations: IterationsOption = 200,
    restarts: RestartsOption = 1,
    audited: AuditedOption = 4,
    every: Annotated[int, typer.Option(help="Audit rounds 1, 1+N, 1+2N, ...")] = 20,
    attack_only: Annotated[bool, typer.Option(
        help="Leakage only, no federated training: attack --images single-image gradients of the untrained "
             "model behind each defense (the DLG paper's setting).")] = False,
    images: Annotated[int, typer.Option(help="With --attack-only: images attacked per cell and seed.")] = 8,
    labels_known: LabelsKnownOption = False,
    device: DeviceOption = "auto",
    semsim_checkpoint: SemSimOption = None,
    save_images: Annotated[bool, typer.Option(help="Keep every cell's reconstructions as PNG.")] = False,
    out: Annotated[Path, typer.Option(
        help="Sweep folder; run again with the same settings to resume (finished cells are skipped).")] = (
        Path("runs/bench")),
    tensorboard: TensorBoardOption = None,
) -> None:
    """Sweep defenses x strengths x seeds: accuracy lost against leakage saved, the strongest attack deciding.

    A cell is one audited Flower training (or, with --attack-only, attacks on single-image gradients);
    every attack of the cell attacks the same updates and the highest leakage counts.
    """
    started = time.monotonic()
    # torch, matplotlib, Flower and the attack registry load with the sweep's logic, only now.
    from semsim_audit.bench import (
        PRESETS,
        Cell,
        CellResult,
        SweepExecutor,
        SweepState,
        aggregate,
        attack_cell,
        attacks_table,
        cell_attacks,
        cell_grid,
        parse_attack,
        parse_defense,
        parse_defense_option,
        results_table,
        run_sweep,
        with_other_attacks,
        write_outputs,
    )

    chosen = PRESETS[preset] if preset is not None else None
    if chosen is not None:
        # A preset fills every option left at its default; what the command line gives wins.
        defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
        values = {name: value for name, value in chosen.options.items()
                  if ctx.get_parameter_source(name) in defaults}
        seeds, images = values.get("seeds", seeds), values.get("images", images)
        iterations, restarts = values.get("iterations", iterations), values.get("restarts", restarts)
        attack_only = values.get("attack_only", attack_only)
        uniform_init = values.get("uniform_init", uniform_init)
        dataset, model = values.get("dataset", dataset), values.get("model", model)
    defense_texts = defense or list(chosen.defenses if chosen else DEFAULT_DEFENSES)
    attack_texts = attack or list(chosen.attacks if chosen else DEFAULT_ATTACKS)
    try:
        specs = [parse_defense(spec) for spec in defense_texts]
        options = dict(parse_defense_option(text) for text in (defense_option or []))
        attacks = [parse_attack(text) for text in attack_texts]
        cells = cell_grid(specs, list(range(seeds)) if seeds >= 1 else [])
    except ValueError as error:
        fail(str(error))
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        fail(f"--attack: each attack once (with its iterations), got {', '.join(labels)}")
    flower_only = sorted({s.name for s in specs} & {"localdp", "dp-fixed"})
    if attack_only and flower_only:
        fail(f"--defense {flower_only[0]}: Flower's DP mods need a federated run, not --attack-only")
    for value, option in ((clients, "--clients"), (rounds, "--rounds"), (local_steps, "--local-steps"),
                          (batch_size, "--batch-size"), (iterations, "--iterations"),
                          (restarts, "--restarts"), (audited, "--audited"), (every, "--every"),
                          (images, "--images")):
        at_least(value, 1, option)
    if samples_per_client is not None:
        at_least(samples_per_client, 1, "--samples-per-client")
    if not 0.0 < fraction_train <= 1.0:
        fail(f"--fraction-train must lie in (0, 1], got {fraction_train:g}")
    positive_number(lr, "--lr")
    checkpoint_or_fail(semsim_checkpoint)
    if tensorboard is not None:
        if attack_only:
            fail("--tensorboard logs the rounds of a federated run; --attack-only has none")
        tensorboard_sink_or_fail(tensorboard)  # the folder and the extra, checked before any cell runs

    from semsim_audit.config import AuditConfig

    audit_fields: dict[str, Any] = {
        "attack": attacks[0].attack, "attack_config": attacks[0].config(iterations, restarts).explicit(),
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
    test_split = None if dataset == "folder" or attack_only else dataset_or_fail(
        dataset, train=False, root=data_root, download=download)
    data = {"dataset": train_split, "test_dataset": test_split}
    model_options = {"uniform_init": True} if model == "lenet" and uniform_init else {}
    if attack_only and images > len(train_split):
        fail(f"--images {images} is more than the {len(train_split)} images of {dataset!r}")

    attack_settings = {"attacks": [f"{a.label}:{a.iterations or iterations}" for a in attacks],
                       "adaptive": adaptive, "restarts": restarts, "device": device,
                       "threat_model": audit_fields["threat_model"],
                       "semsim_checkpoint": audit_fields["semsim_checkpoint"]}
    simulation = {"model": model, "model_options": model_options, "num_clients": clients, "rounds": rounds,
                  "fraction_train": fraction_train, "local_steps": local_steps, "batch_size": batch_size,
                  "lr": lr, "partition": partition, "alpha": alpha, "samples_per_client": samples_per_client}
    if attack_only:
        settings: dict[str, Any] = {"cell": "attack-only", "dataset": dataset, "model": model,
                                    "model_options": model_options, "images": images, **attack_settings}
    else:
        settings = {"cell": "federated", "dataset": dataset, **simulation, "every": every, "audited": audited,
                    **attack_settings}
    settings.update({"preset": preset, "defense_options": options, "save_images": save_images})
    if data_root is not None and dataset in (*TORCHVISION_DATASET_NAMES, "folder"):
        settings["data_root"] = str(data_root.resolve())  # other files, other sweep
    state = SweepState(out, settings)
    try:
        state.open()
    except ValueError as error:
        fail(str(error))

    from semsim_audit.semsim import SemSim

    try:
        semsim = SemSim.load(semsim_checkpoint, device=device)
    except ValueError as error:
        fail_run(f"--semsim: {error}")

    def run_attack_cell(cell: Cell, folder: Path) -> Any:
        return attack_cell(cell, folder, dataset=train_split, model=model, model_options=model_options,
                           images=images, attacks=cell_attacks(cell.defense, attacks, adaptive),
                           iterations=iterations, restarts=restarts, device=device, semsim=semsim,
                           labels_known=labels_known, options=options, save_images=save_images)

    # Ray loads with the simulation, once the settings are known to be good.
    from semsim_audit.strategies.defenses import defense_mods, dp_fixed_strategy
    from semsim_audit.strategies.simulation import run_audited_simulation

    def run_federated_cell(cell: Cell, folder: Path) -> Any:
        first, *others = cell_attacks(cell.defense, attacks, adaptive)
        executor = SweepExecutor({a.label: (a.attack, a.config(iterations, restarts, seed=cell.seed,
                                                                device=device)) for a in others})
        run_config = cell.run_config(options)
        # The other attacks are scored against the originals the clients export with their first scores,
        # which the run folder keeps as images.
        own = {"attack": first.attack, "attack_config": first.config(iterations, restarts).explicit()}
        audit = AuditConfig(**{**audit_fields, **own}, seed=cell.seed, out_dir=folder,
                            save_images=save_images or bool(others))
        extra: dict[str, Any] = {}
        if cell.defense == "dp-fixed":
            # Flower's client-side fixed clipping is a pair: this server wrapper sends the clipping
            # norm, the client's fixedclipping_mod clips; the wrapper's noise goes on the aggregate.
            sampled = max(1, int(clients * fraction_train))
            extra["wrap_strategy"] = lambda inner: dp_fixed_strategy(inner, run_config, sampled)
        # One TensorBoard run per cell (DIR/<cell id>), so TensorBoard lays the cells side by side.
        sinks = [] if tensorboard is None else [tensorboard_sink_or_fail(tensorboard / cell.cell_id, folder)]
        report = run_audited_simulation(**data, **simulation, seed=cell.seed, audit=audit,
                                        client_mods=defense_mods(), run_config=run_config, sinks=sinks,
                                        executor=executor, **extra)
        return with_other_attacks(report, executor, folder, semsim, label=first.label)

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # a log or a pipe: one line per row of the tables
    what = "attack-only" if attack_only else "federated"
    adaptive_note = " (+ adaptive)" if adaptive else ""
    console.print(f"[bold]{len(cells)} {what} cells[/] ({len(specs)} defense spec(s) x strengths x {seeds} "
                  f"seed(s)), attacks {', '.join(labels)}{adaptive_note} -> {out}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)

    def on_done(result: CellResult, skipped: bool) -> None:
        if skipped:
            note = "skipped (finished before)"
        elif result.status == "ok":
            note = (f"[green]ok[/] in {result.seconds:.0f}s: accuracy "
                    f"{format_value(result.accuracy, '.3f')}, leakage "
                    f"{format_value(result.leakage_rate, '.2f')} ({result.attack or 'no attack'})")
        else:
            note = f"[bold red]failed[/]: {result.reason}"
        progress.console.print(f"  {result.cell.label} seed {result.seed}: {note}", highlight=False)
        progress.advance(task)

    with progress:
        task = progress.add_task("sweep", total=len(cells))
        results = run_sweep(cells, state, run_attack_cell if attack_only else run_federated_cell,
                            on_done=on_done)

    rows = aggregate(results)
    console.print(results_table(rows))
    console.print(attacks_table(rows))
    files = write_outputs(rows, results, settings, out)
    failed = [r for r in results if r.status == "failed"]
    console.print("files: " + ", ".join(str(path) for path in files.values()))
    console.print(f"sweep finished in {time.monotonic() - started:.0f} s")
    if failed:
        fail_run(f"{len(failed)} of {len(results)} cell(s) failed; run the same command again to retry them")
