"""`semsim-audit demo`, `report` and `attack`: run an audited simulation, re-render a run, attack a sample.

torch, matplotlib and Flower load inside the commands that use them, so ``--help`` and input errors
come fast; Flower only in :func:`demo`, the one command that runs a simulation.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from semsim_audit.cli.common import (
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
    RestartsOption,
    RoundsOption,
    SeedOption,
    SemSimOption,
    TensorBoardOption,
    at_least,
    checkpoint_or_fail,
    dataset_or_fail,
    fail,
    fail_run,
    positive_number,
    report_or_fail,
    tensorboard_sink_or_fail,
)
from semsim_audit.report import ClientAudit, PrivacyReport, RoundRecord, format_value

__all__ = ["demo", "report", "attack", "register"]


def _print_path(console: Console, label: str, path: Path) -> None:
    """One line, never wrapped inside the path, so it can be copied from the terminal."""
    console.print(f"{label}: [bold]{escape(str(path))}[/]", soft_wrap=True, highlight=False)


def report(
    path: Annotated[Path, typer.Argument(help="A run folder, or its report.jsonl / report.json.")],
    out: Annotated[Path | None, typer.Option(
        help="Folder for the rendered files (default: the run folder itself).")] = None,
    svg: Annotated[bool, typer.Option(help="Also export the console view as console.svg.")] = True,
) -> None:
    """Re-render the console table, report.html, CSV, JSON and plots of a run (also a killed one)."""
    # matplotlib loads with the views, not at start-up.
    from semsim_audit.views import render_report, render_run

    loaded, run_dir = report_or_fail(path)
    console = Console()
    render_report(loaded, console)
    target = out or run_dir
    try:
        if out is not None:
            _copy_images(loaded, run_dir, out)
        files = render_run(loaded, target, svg=svg)
    except OSError as error:
        fail_run(f"cannot write the report into {target}: {error.strerror or error}")
    _print_path(console, "report", files.html)


def _copy_images(report: PrivacyReport, run_dir: Path, out: Path) -> None:
    """Copy the saved images a report references, so a report rendered elsewhere still finds them."""
    # matplotlib loads with the views, not at start-up.
    from semsim_audit.views.files import saved_image

    for record in report.rounds:
        for audit in record.clients:
            for score in audit.scores:
                for relative in (score.original_image, score.reconstruction_image):
                    source = saved_image(run_dir, relative)
                    if source is not None:
                        target = out / source.relative_to(run_dir.resolve())
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(source, target)


def register(app: typer.Typer) -> None:
    """Add `demo`, `report` and `attack` to the `semsim-audit` app."""
    for command in (demo, report, attack):
        app.command()(command)


def demo(
    dataset: DatasetOption = "photos",
    data_root: DataRootOption = None,
    download: DownloadOption = False,
    model: ModelOption = "lenet",
    uniform_init: Annotated[bool, typer.Option(
        help="LeNet only: DLG's uniform(-0.5, 0.5) weights, the setting of the DLG paper.")] = True,
    attack_name: AttackOption = "idlg",
    rounds: RoundsOption = 40,
    clients: ClientsOption = 16,
    audited: AuditedOption = 2,
    every: Annotated[int, typer.Option(
        help="Audit rounds 1, 1+N, 1+2N, ... (the untrained model first).")] = 19,
    iterations: IterationsOption = 100,
    local_steps: LocalStepsOption = 1,
    batch_size: BatchSizeOption = 1,
    lr: LrOption = 0.1,
    device: DeviceOption = "auto",
    out: Annotated[Path, typer.Option(help="Folder that receives one run folder per run.")] = Path("runs"),
    images: Annotated[bool, typer.Option(help="Save originals and reconstructions (grids, HTML).")] = True,
    seed: SeedOption = 0,
    semsim_checkpoint: SemSimOption = None,
    tensorboard: TensorBoardOption = None,
) -> None:
    """The main job: a real Flower simulation whose clients' updates are attacked and scored, live.

    Every client trains in every round; --audited of them are attacked every --every rounds. The
    defaults are FedSGD on single images (one local step, batch 1): the model learns (16 clients'
    gradients averaged per round) and each client's update is the gradient of one image, which
    iDLG inverts (see the README).
    """
    for value, minimum, option in ((rounds, 1, "--rounds"), (clients, 1, "--clients"),
                                   (audited, 1, "--audited"), (every, 1, "--every"),
                                   (iterations, 1, "--iterations"),
                                   (local_steps, 1, "--local-steps"), (batch_size, 1, "--batch-size"),
                                   (seed, 0, "--seed")):
        at_least(value, minimum, option)
    if audited > clients:
        fail(f"--audited {audited} is more than --clients {clients}")
    positive_number(lr, "--lr")
    torch_device = _device_or_fail(device)
    checkpoint_or_fail(semsim_checkpoint)
    if out.exists() and not out.is_dir():
        fail(f"--out: {out} exists and is not a folder")
    data = dataset_or_fail(dataset, root=data_root, download=download)
    # A folder has no test split: the simulation then evaluates on the training images, and says so.
    test_data = None if dataset == "folder" else dataset_or_fail(dataset, train=False, root=data_root,
                                                                  download=download)
    model_options = {"uniform_init": True} if model == "lenet" and uniform_init else {}
    _model_or_fail(model, data.spec, model_options)
    per_client = len(data) // clients
    if per_client < batch_size:
        fail(f"--clients {clients} leave {per_client} image(s) per client, "
             f"fewer than --batch-size {batch_size}")

    # torch (with the attacks behind AuditConfig) and matplotlib (views) load only now.
    from semsim_audit.config import AuditConfig
    from semsim_audit.views import ConsoleSink, RunFolderSink, new_run_dir

    # Without run_dir, the sink finds the images through the report's out_dir (the run folder below).
    board = None if tensorboard is None else tensorboard_sink_or_fail(tensorboard)
    try:
        run_dir = new_run_dir(out)
    except OSError as error:
        fail_run(f"--out: cannot create a run folder under {out}: {error.strerror or error}")
    audit = AuditConfig(attack=attack_name, attack_config={"iterations": iterations}, clients=audited,
                        every=every, seed=seed, out_dir=run_dir, save_images=images, device=str(torch_device),
                        semsim_checkpoint=str(semsim_checkpoint) if semsim_checkpoint else None)

    # Flower (and Ray) load only here: every other command starts without them.
    from semsim_audit.strategies.simulation import run_audited_simulation

    console = Console()
    console.print(f"[bold]semsim-audit demo[/]: {clients} clients x {rounds} rounds of FedAvg on {dataset!r} "
                  f"({model}), {attack_name} ({iterations} iterations) on {audited} client(s) every {every} "
                  f"round(s), "
                  f"device {torch_device}")
    _print_path(console, "run folder", run_dir)
    views = RunFolderSink(run_dir)
    sinks = [ConsoleSink(console, total_rounds=rounds), views, *([board] if board is not None else [])]
    started = time.monotonic()
    try:
        result = run_audited_simulation(
            dataset=data, test_dataset=test_data, model=model, model_options=model_options,
            num_clients=clients, rounds=rounds, local_steps=local_steps, batch_size=batch_size, lr=lr,
            seed=seed, audit=audit, sinks=sinks)
    except ValueError as error:
        fail_run(str(error))
    seconds = time.monotonic() - started
    if views.files is None:
        fail_run(f"the simulation ended without a report; partial results (if any) are in {run_dir}")
    console.print(f"finished in {seconds:.0f} s; rounds.csv, scores.csv, report.json, plots/ and console.svg "
                  "are in the run folder. Open the report:")
    _print_path(console, "report", views.files.html)
    audited_rounds = [r for r in result.rounds if r.status != "not audited"]
    if audited_rounds and all(r.status == "failed" for r in audited_rounds):
        fail_run("every audit of the run failed; the reasons are in the closing panel and the report")


def _model_or_fail(name: str, spec: Any, options: dict[str, Any] | None = None) -> Any:
    # torch loads with the models, not at start-up.
    from semsim_audit.models import model_for

    try:
        return model_for(name, spec, **(options or {}))
    except ValueError as error:
        fail(f"--model: {error}")


def _device_or_fail(device: str) -> Any:
    # torch loads with the core, not at start-up.
    from semsim_audit.core import select_device

    try:
        return select_device(device)
    except ValueError as error:
        fail(f"--device: {error}")


def _scores_table(audit: ClientAudit) -> Table:
    table = Table(title=f"{audit.attack}: {audit.num_images} image(s), {audit.seconds:.1f} s",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for header in ("original", "SemSim", "recognizable", "PSNR", "SSIM", "LPIPS", "label", "recovered"):
        table.add_column(header, justify="right")
    for score in audit.scores:
        table.add_row(str(score.original_index), format_value(score.semsim, ".3f"),
                      {True: "[bold red]yes[/]", False: "no", None: "n/a"}[score.recognizable],
                      format_value(score.psnr, ".1f"), format_value(score.ssim, ".3f"),
                      format_value(score.lpips, ".3f"), str(score.true_label), str(score.recovered_label))
    return table


def attack(
    dataset: DatasetOption = "photos",
    data_root: DataRootOption = None,
    download: DownloadOption = False,
    model: ModelOption = "lenet",
    attack_name: AttackOption = "inverting-gradients",
    samples: Annotated[int, typer.Option(help="Images in the attacked batch (the client's batch size).")] = 1,
    index: Annotated[int, typer.Option(help="Index of the first image of the batch in the dataset.")] = 0,
    iterations: IterationsOption = 300,
    restarts: RestartsOption = 1,
    labels_known: LabelsKnownOption = False,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    semsim_checkpoint: SemSimOption = None,
    out: Annotated[Path | None, typer.Option(
        help="Also write a run folder (images, report.html) under this folder.")] = None,
) -> None:
    """Attack one batch of a dataset outside Flower (FedSGD gradient) and print its scores."""
    for value, minimum, option in ((samples, 1, "--samples"), (index, 0, "--index"),
                                   (iterations, 1, "--iterations"), (restarts, 1, "--restarts"),
                                   (seed, 0, "--seed")):
        at_least(value, minimum, option)
    torch_device = _device_or_fail(device)
    checkpoint_or_fail(semsim_checkpoint)
    data = dataset_or_fail(dataset, root=data_root, download=download)
    if index + samples > len(data):
        fail(f"--index {index} + --samples {samples} runs past the {len(data)} images of {dataset!r}")

    # torch, the attacks, SemSim and matplotlib (views) load only now, not at start-up.
    import torch

    from semsim_audit.attacks import AttackConfig, Observation, run_attack
    from semsim_audit.core import seed_everything
    from semsim_audit.scoring import score_client
    from semsim_audit.semsim import SemSim
    from semsim_audit.views import new_run_dir, render_run

    seed_everything(seed)
    victim = _model_or_fail(model, data.spec)
    batch = [data[i] for i in range(index, index + samples)]
    inputs = torch.stack([image for image, _ in batch])
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    loss = torch.nn.functional.cross_entropy(victim(inputs), labels)
    gradients = torch.autograd.grad(loss, [p for p in victim.parameters()])
    observation = Observation.from_gradients(victim, gradients, data.spec, num_samples=samples,
                                             labels=labels if labels_known else None)
    console = Console()
    try:
        semsim = SemSim.load(semsim_checkpoint, device=torch_device)
    except ValueError as error:
        fail_run(f"--semsim: {error}")
    config = AttackConfig(iterations=iterations, restarts=restarts, seed=seed, device=str(torch_device))
    with console.status(f"{attack_name}: {iterations} iterations x {restarts} restart(s) on {torch_device}"):
        try:
            result = run_attack(attack_name, observation, config)
        except ValueError as error:  # input the attack cannot use; a diverging attack is a result
            fail_run(f"attack failed: {error}")
    try:
        run_dir = new_run_dir(out) if out is not None else None
    except OSError as error:
        fail_run(f"--out: cannot create a run folder under {out}: {error.strerror or error}")
    audit = score_client(node_id=0, attack=attack_name, result=result,
                         originals=data.spec.denormalize(inputs).clamp(0.0, 1.0), true_labels=labels,
                         semsim=semsim, server_round=1, local_steps=1, batch_size=samples, run_dir=run_dir)
    if audit.status == "ok":
        console.print(_scores_table(audit))
        console.print(f"leakage rate {format_value(audit.leakage_rate, '.0%')} "
                      f"(SemSim {semsim.info.get('annotator', 'unknown')} checkpoint, "
                      f"threshold {semsim.threshold:.3f}); label accuracy "
                      f"{format_value(audit.label_accuracy, '.0%')}")
    if run_dir is not None:
        threat = "labels_known" if labels_known else "labels_recovered"
        report = PrivacyReport(attack=attack_name, threat_model=threat, semsim=semsim.info,
                               config={"command": "attack", "dataset": dataset, "model": model,
                                       "samples": samples, "index": index, "iterations": iterations,
                                       "restarts": restarts, "seed": seed, "device": str(torch_device)},
                               rounds=[RoundRecord(round=1, clients=[audit]).summarise()])
        files = render_run(report, run_dir)
        _print_path(console, "report", files.html)
    if audit.status != "ok":
        fail_run(f"attack failed: {audit.reason}")
