"""`semsim-audit semsim ...`: train, evaluate, inspect and download SemSim checkpoints and data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from semsim_audit.cli.common import fail, fail_run

app = typer.Typer(help="Train, evaluate and inspect SemSim, the human-aligned leakage metric.",
                  no_args_is_help=True, add_completion=False)
console = Console()

def _checkpoint_error(path: Path | None, error: ValueError) -> None:
    """Exit for a checkpoint that did not load: 2 when no file was there (the command line is wrong),
    1 when the file is there but unreadable (corrupt, truncated, another architecture)."""
    if path is not None and not path.is_file():
        fail(f"--checkpoint: no checkpoint file at {path}")
    fail_run(str(error))


# The annotation folder `train` reads; the device option `train` and `eval` share.
AnnotationsOption = Annotated[Path, typer.Option(help="annotation folder in the released layout")]
TorchDeviceOption = Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda[:N]'")]


@app.command()
def train(
    data: AnnotationsOption,
    out: Annotated[Path, typer.Option(help="checkpoint file to write (.safetensors)")],
    head: Annotated[str | None, typer.Option(
        help="'stats' (projection head on feature statistics; the default), 'stats-layout' (the same, "
             "statistics that also see layout and sharpness), 'stats-early' (those of the stem and first "
             "two stages only: the shipped default checkpoint's) or 'none' (the released model)")] = None,
    trainable: Annotated[str | None, typer.Option(
        help="'head' (frozen backbone; the default) or 'all' (the whole network, as released)")] = None,
    loss: Annotated[str | None, typer.Option(
        help="'pairs' (logistic loss on pair distances; default with the stats head) or 'triplet' "
             "(released; default without)")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="training epochs (default 30 for the head, the released 100 for the whole network)")] = None,
    width: Annotated[int | None, typer.Option(
        help="ResNet-18 base width; default: the --init checkpoint's, from scratch 16 with the stats head "
             "and the released 64 without")] = None,
    batch: Annotated[int | None, typer.Option(
        help="pairs or triplets per batch (default 128 for the head, the released 64 otherwise)")] = None,
    device: TorchDeviceOption = "auto",
    seed: Annotated[int, typer.Option(help="seed of the split, sampling and augmentation")] = 23333,
    val_fraction: Annotated[float, typer.Option(help="fraction of identities held out for validation")] = 0.1,
    annotator: Annotated[str, typer.Option(help="'human' or 'proxy': who labelled --data")] = "human",
    fp16: Annotated[bool, typer.Option(help="store the weights in float16 (half the file)")] = False,
    init: Annotated[str | None, typer.Option(
        help="start from 'scratch' (a random backbone; the default), 'default' (the packaged "
             "checkpoint's weights) or a checkpoint file")] = None,
    lr: Annotated[float | None, typer.Option(
        help="learning rate; default 1e-3 (Adam) for the head; for the whole network 0.05 from scratch, "
             "0.01 from a checkpoint")] = None,
    freeze_epochs: Annotated[int | None, typer.Option(
        help="with --trainable all: first epochs that train only the last ResNet stage (default 0)")] = None,
    augment: Annotated[str | None, typer.Option(
        help="with --trainable all: 'none', 'released' (crop + flip; the default) or 'strong' "
             "(+ colour jitter)")] = None,
    patience: Annotated[int | None, typer.Option(
        help="stop after this many epochs without a better validation AUC (0: never; default 10)")] = None,
    keep: Annotated[str | None, typer.Option(
        help="'best' (validation AUC; the default) or 'last' epoch's weights")] = None,
) -> None:
    """Train a SemSim checkpoint on annotations; resumes from OUT.resume when it exists.

    Default: a projection head on a frozen random backbone (seconds on a CPU; beats PSNR/SSIM with
    about 200 annotated identities in benchmarks/semsim_sample_efficiency.py). The released recipe:
    --head none --trainable all --loss triplet.
    """
    # torch loads with SemSim's modules, in each command, not at start-up.
    from semsim_audit.semsim.train import TrainConfig
    from semsim_audit.semsim.train import train as run_training

    try:
        config = TrainConfig(epochs=epochs, width=width, batch_size=batch, device=device, seed=seed,
                             val_fraction=val_fraction, annotator=annotator,  # type: ignore[arg-type]
                             storage_dtype="float16" if fp16 else "float32", lr=lr, loss=loss,  # type: ignore[arg-type]
                             **_given(head=head, trainable=trainable, init=init, freeze_epochs=freeze_epochs,
                                      augment=augment, patience=patience, keep=keep))
        result = run_training(data, out, config)
    except ValueError as error:
        fail(str(error))
    meta = result.metadata
    console.print(f"wrote [bold]{result.path}[/]: threshold {meta.threshold:.4f}, validation AUC "
                  f"{_number(meta.training.get('val_auc'))}, balanced accuracy "
                  f"{_number(meta.training.get('balanced_accuracy'))} (calibrated on "
                  f"{meta.training.get('calibrated_on')} identities)")


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set; the others keep TrainConfig's defaults (chosen by the benchmark)."""
    return {name: value for name, value in options.items() if value is not None}


@app.command("eval")
def evaluate_command(
    data: Annotated[Path, typer.Option(
        help="an annotation folder in the released layout; or the --out folder of `semsim-audit annotate` "
             "(its answers about the run folder it was begun on); or a run folder / folder of pairs with "
             "--labels")],
    labels: Annotated[list[Path] | None, typer.Option(
        help="answers about --data: a labels.jsonl file or an `annotate --out` folder (repeatable; "
             "annotators are merged by majority vote)")] = None,
    min_votes: Annotated[int, typer.Option(min=1, help="with answers: votes an item needs to count")] = 1,
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint file (default: packaged)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results here")] = None,
    device: TorchDeviceOption = "auto",
    lpips: Annotated[bool, typer.Option(help="include LPIPS when its weights are on this machine")] = True,
) -> None:
    """How well SemSim, PSNR, SSIM (and LPIPS) tell recognizable reconstructions from the rest.

    Check the judge on your own reconstructions in one command: label a run folder with
    `semsim-audit annotate RUN --out LABELS`, then `semsim-audit semsim eval --data LABELS`.
    """
    # torch loads with SemSim's modules, in each command, not at start-up.
    from semsim_audit.semsim.evaluate import evaluate, evaluate_pairs
    from semsim_audit.semsim.scorer import SemSim

    try:
        semsim = SemSim.load(checkpoint, device=device)
    except ValueError as error:
        _checkpoint_error(checkpoint, error)
    try:
        answered = _answered_source(data, labels or [])
        if answered is None:
            results = evaluate(data, semsim, use_lpips=lpips)
        else:
            source, files = answered
            originals, reconstructions, verdicts, configurations = _answered_pairs(source, files, min_votes)
            described = f"{source} (answers: {', '.join(str(f) for f in files)})"
            results = evaluate_pairs(originals, reconstructions, verdicts, semsim,
                                     configurations=configurations, data=described, use_lpips=lpips)
    except ValueError as error:
        fail(str(error))
    print_evaluation(results)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2))
        console.print(f"results written to {json_out}")


def _answered_source(data: Path, labels: list[Path]) -> tuple[Path, list[Path]] | None:
    """(SOURCE, labels files) when ``data`` holds answers from `semsim-audit annotate`; None for the released
    layout."""
    from semsim_audit.annotate.store import LABELS_FILE, SESSION_FILE, session_source

    files = [path / LABELS_FILE if path.is_dir() else path for path in labels]
    for file in files:
        if not file.is_file():
            raise ValueError(f"--labels {file}: no such labels file")
    if (data / SESSION_FILE).is_file():
        return session_source(data), [data / LABELS_FILE, *files]
    return (data, files) if files else None


def _answered_pairs(source: Path, files: list[Path],
                    min_votes: int) -> tuple[Any, Any, list[bool], list[str | None]]:
    """The majority-labelled pairs of ``source``: originals, reconstructions, verdicts, configurations."""
    import torch

    from semsim_audit.annotate import load_items, read_labels, tally
    from semsim_audit.semsim.annotations import load_image

    items = load_items(source)
    records = [record for file in files for record in read_labels(file)]
    rows = [row for row in tally(items, records, min_votes=min_votes)
            if row["label"] in ("recognizable", "not_recognizable")]
    if not rows:
        raise ValueError(f"{source}: no item has a majority answer in {', '.join(str(f) for f in files)}")
    chosen = [(items.get(row["item"]), row) for row in rows]
    originals = torch.stack([load_image(item.original) for item, _ in chosen])  # type: ignore[union-attr]
    reconstructions = torch.stack([load_image(item.reconstruction) for item, _ in chosen])  # type: ignore[union-attr]
    verdicts = [row["label"] == "recognizable" for _, row in chosen]
    # The configuration that made each reconstruction, as `annotate export` names it.
    configurations = [f"{row['meta']['attack']}/round-{row['meta']['round']}" if "attack" in row["meta"]
                      else None for _, row in chosen]
    return originals, reconstructions, verdicts, configurations


@app.command()
def show(
    checkpoint: Annotated[Path | None, typer.Argument(help="checkpoint file (default: packaged)")] = None,
) -> None:
    """Print a checkpoint's provenance: annotator kind, data, threshold, training summary."""
    # torch loads with SemSim's modules, in each command, not at start-up.
    from semsim_audit.semsim.checkpoint import load_checkpoint
    from semsim_audit.semsim.scorer import DEFAULT_CHECKPOINT

    path = checkpoint or DEFAULT_CHECKPOINT
    try:
        _, meta = load_checkpoint(path)
    except ValueError as error:
        _checkpoint_error(checkpoint, error)
    table = Table(title=f"SemSim checkpoint {path.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field in ("annotator", "data", "architecture", "width", "head", "embedding_dim", "embedding",
                  "threshold", "dtype", "version", "sha256"):
        table.add_row(field, str(getattr(meta, field)))
    table.add_row("borderline_band", str(list(meta.borderline_band)) if meta.borderline_band else "none")
    for field, value in meta.calibration.items():
        table.add_row(f"calibration.{field}", str(value))
    for field in ("val_auc", "balanced_accuracy", "calibrated_on", "identities"):
        if field in meta.training:
            table.add_row(f"training.{field}", str(meta.training[field]))
    console.print(table)


@app.command()
def download(
    to: Annotated[Path, typer.Option(help="folder to unpack the archives into")],
    what: Annotated[list[str] | None, typer.Option(
        help="archive(s): annotations, reconstructions, cifar100-originals")] = None,
) -> None:
    """Fetch the released SemSim annotation archives from Google Drive (needs internet access)."""
    # torch(vision) loads with the downloader, not at start-up.
    from semsim_audit.semsim.download import DownloadError, download_annotations

    try:
        paths = download_annotations(to, tuple(what or ["annotations"]))
    except ValueError as error:  # an unknown archive name
        fail(str(error))
    except DownloadError as error:  # the network or the archive failed: the command line was fine
        fail_run(str(error))
    for path in paths:
        console.print(f"unpacked {path}")


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def print_evaluation(results: dict[str, Any]) -> None:
    """The rich tables of an evaluation: per image, then per configuration when present."""
    checkpoint = results["checkpoint"]
    table = Table(title=f"Recognizable vs not: {results['pairs']} pairs ({results['recognizable']} "
                        f"recognizable); SemSim checkpoint: {checkpoint['annotator']}, "
                        f"width {checkpoint['width']}")
    for column in ("metric", "AUC", "balanced acc. (threshold)", "best balanced acc.",
                   "mean recognizable", "mean unrecognizable"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, row in results["per_image"].items():
        at_threshold = (f"{row['balanced_accuracy']:.4f} (<= {row['threshold']:.3f})"
                        if "balanced_accuracy" in row else "-")
        table.add_row(name, _number(row["auc"]), at_threshold, _number(row["balanced_accuracy_best"]),
                      _number(row["mean_recognizable"]), _number(row["mean_unrecognizable"]))
    console.print(table)
    semsim_row = results["per_image"]["semsim"]
    band = checkpoint.get("borderline_band")
    if "borderline" in semsim_row and band:
        console.print(f"borderline pairs (SemSim within {band[0]:.3f}-{band[1]:.3f}): "
                      f"{semsim_row['borderline']} of {results['pairs']}; accuracy of the verdict "
                      f"outside the band: {_number(semsim_row['accuracy_outside_band'])}")
    else:
        console.print("borderline pairs: n/a (this checkpoint records no borderline band)")
    if not results["lpips"]:
        console.print("LPIPS: n/a (package or weights not on this machine)")
    per_configuration = results["per_configuration"]
    if per_configuration is None:
        console.print("per-configuration correlation: n/a (configurations.csv absent or < 3 configurations)")
        return
    correlation = Table(title=f"Per configuration ({len(per_configuration['configurations'])}): correlation "
                              f"with the human score (fraction unrecognizable)")
    for column in ("metric", "Spearman", "Pearson", "Kendall"):
        correlation.add_column(column, justify="left" if column == "metric" else "right")
    for name, row in per_configuration["correlation"].items():
        correlation.add_row(name, _number(row["spearman"]), _number(row["pearson"]), _number(row["kendall"]))
    console.print(correlation)
