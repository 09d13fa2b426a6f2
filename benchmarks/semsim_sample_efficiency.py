"""How many annotated identities SemSim training needs to beat PSNR/SSIM: the default vs the released recipe.

    python benchmarks/semsim_sample_efficiency.py [--sizes 25,50,100,200,400] [--seeds 0,1,2]
        [--epochs 2] [--variants default,released-scratch] [--heldout 100] [--plot curves.png]
        [--json results.json]

Annotations come from the simulated annotator (:mod:`semsim_audit.semsim.simulated`), a documented,
rule-based stand-in for people: the numbers say how the training recipes cope with that rule, not
with human judgement. For every seed, the training identities are a fresh draw (the first N of one
seeded set, so larger sets contain the smaller ones) written in the released layout and trained on with
``semsim-audit semsim train``'s code; the held-out identities are crops from a band of every photograph
that no training identity touches, the same for every run. Reported per N: held-out ROC AUC
(recognizable vs not) and balanced accuracy at the checkpoint's own calibrated threshold, mean and
spread (standard deviation) over the seeds, beside PSNR, SSIM and LPIPS (when its weights are on the
machine; their thresholds are calibrated on the same N training identities) and the proxy-v1
checkpoint (the shipped default when this benchmark was recorded; ``PROXY_V1_CHECKPOINT``) without
fine-tuning. Variants (``--variants``): ``default`` is ``semsim train`` with no options (the
stats head on a frozen random backbone); ``released-scratch`` is the released recipe from scratch (whole
ResNet, triplet loss) at the proxy-v1 checkpoint's width, trained for ``--epochs`` epochs (an upper bound
with early stopping); the others are listed in ``VARIANTS``. Variants that train only the head use the
trainer's own epoch count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from rich.console import Console
from rich.table import Table

from semsim_audit import metrics
from semsim_audit.semsim import PROXY_V1_CHECKPOINT, SemSim
from semsim_audit.semsim.calibration import balanced_accuracy, calibrate_threshold, roc_auc
from semsim_audit.semsim.simulated import SimulatedAnnotations, simulate_annotations, write_released_layout
from semsim_audit.semsim.train import TrainConfig, train

HELDOUT_SEED = 1000
# Training variants: name -> TrainConfig overrides (everything else is the trainer's default). Variants
# that train the whole network run for --epochs; released-recipe runs from scratch get the proxy-v1
# checkpoint's width, so they compare the same network as fine-tuning it. "Shipped" below is proxy-v1.
RELEASED: dict[str, Any] = {"head": "none", "trainable": "all", "loss": "triplet"}
SHIPPED = str(PROXY_V1_CHECKPOINT)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "released-scratch": {**RELEASED, "init": "scratch"},
    "released-fine-tuned": {**RELEASED, "init": SHIPPED},
    "released-fine-tuned-strong-augmentation": {**RELEASED, "init": SHIPPED, "augment": "strong"},
    "released-fine-tuned-last-stage-2-epochs": {**RELEASED, "init": SHIPPED, "freeze_epochs": 2},
    "head-on-shipped-backbone": {"init": SHIPPED},
    "head-triplet": {"loss": "triplet"},
    "head-width-32": {"width": 32},
    "head-keep-last": {"keep": "last", "patience": 0},
}
DEFAULT_VARIANTS = ("default", "released-scratch")
# PSNR of identical images is +inf; capping it keeps thresholds finite without changing any ranking.
PSNR_CAP = 100.0


def _pixel_scores(annotations: SimulatedAnnotations) -> dict[str, np.ndarray]:
    """Per pair, a distance (lower = more similar) for each pixel metric available here."""
    originals, reconstructions, _ = annotations.pairs()
    return pixel_distances(originals, reconstructions)


def pixel_distances(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, np.ndarray]:
    """PSNR, SSIM (and LPIPS where installed) as distances, lower = more similar, one per pair."""
    scores = {
        "PSNR": PSNR_CAP - metrics.psnr(originals, reconstructions).clamp(max=PSNR_CAP).numpy(),
        "SSIM": 1.0 - metrics.ssim(originals, reconstructions).numpy(),
    }
    learned = metrics.lpips(originals, reconstructions)
    if learned is not None:
        scores["LPIPS"] = learned.numpy()
    return scores


def _judge(distances: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(ROC AUC, balanced accuracy at ``threshold``) of a distance at telling recognizable from not."""
    return roc_auc(-distances, labels), balanced_accuracy(distances <= threshold, labels)


def _semsim_distances(sem: SemSim, annotations: SimulatedAnnotations) -> np.ndarray:
    originals, reconstructions, _ = annotations.pairs()
    return sem.distance(originals, reconstructions).numpy()


def run(sizes: list[int], seeds: list[int], epochs: int, heldout_identities: int, variants: list[str],
        workdir: Path, console: Console) -> dict[str, Any]:
    """Train every variant at every size and seed; return all held-out scores."""
    heldout = simulate_annotations(heldout_identities, split="heldout", seed=HELDOUT_SEED)
    heldout_labels = heldout.recognizable.numpy()
    heldout_pixels = _pixel_scores(heldout)
    default = SemSim.load(PROXY_V1_CHECKPOINT, device="cpu")
    shipped = _semsim_distances(default, heldout)
    results: dict[str, Any] = {
        "heldout": {"identities": heldout_identities, "pairs": int(heldout_labels.size),
                    "recognizable": float(heldout_labels.mean())},
        "shipped": dict(zip(("auc", "balanced_accuracy"), _judge(shipped, heldout_labels, default.threshold),
                            strict=True)),
        "runs": [],
    }
    for seed in seeds:
        pool = simulate_annotations(max(sizes), seed=seed)
        for size in sizes:
            subset = pool.first(size)
            folder = write_released_layout(subset, workdir / f"seed{seed}-n{size}")
            train_labels = subset.recognizable.numpy()
            train_pixels = _pixel_scores(subset)
            for name, values in heldout_pixels.items():
                threshold, _ = calibrate_threshold(train_pixels[name], train_labels)
                auc, balanced = _judge(values, heldout_labels, threshold)
                results["runs"].append({"seed": seed, "size": size, "method": name, "auc": auc,
                                        "balanced_accuracy": balanced})
            for number, variant in enumerate(variants):
                overrides = dict(VARIANTS[variant])
                if overrides.get("trainable") == "all":
                    overrides["epochs"] = epochs
                    if overrides.get("head") == "none" and overrides.get("init", "scratch") == "scratch":
                        overrides["width"] = default.metadata.width
                out = workdir / f"seed{seed}-n{size}-variant{number}.safetensors"
                config = TrainConfig(seed=seed, annotator="human", data_description="simulated annotator",
                                     **overrides)
                start = time.perf_counter()
                trained = train(folder, out, config, progress=False)
                seconds = time.perf_counter() - start
                sem = SemSim.load(out, device="cpu")
                auc, balanced = _judge(_semsim_distances(sem, heldout), heldout_labels, sem.threshold)
                best_epoch = trained.metadata.training.get("best_epoch")
                results["runs"].append({"seed": seed, "size": size, "method": f"SemSim {variant}", "auc": auc,
                                        "balanced_accuracy": balanced, "seconds": seconds,
                                        "epochs_run": len(trained.history), "best_epoch": best_epoch})
                console.log(f"seed {seed} N={size} {variant}: held-out AUC {auc:.3f}, balanced accuracy "
                            f"{balanced:.3f}, {seconds:.0f} s, best epoch {best_epoch}")
    return results


def summarise(results: dict[str, Any], sizes: list[int]) -> tuple[list[Table], dict[str, Any]]:
    """Mean and spread per (method, size), and whether SemSim beat the best pixel metric on every seed."""
    runs = results["runs"]
    methods = list(dict.fromkeys(run["method"] for run in runs))
    tables = []
    for key, title in (("auc", "held-out ROC AUC"), ("balanced_accuracy", "held-out balanced accuracy")):
        pairs = results["heldout"]["pairs"]
        table = Table(title=f"{title}, mean ± sd over seeds, by training identities N "
                            f"({pairs} held-out pairs; simulated annotator, not people)")
        table.add_column("method")
        for size in sizes:
            table.add_column(f"N={size}", justify="right")
        for method in methods:
            cells = []
            for size in sizes:
                values = np.array([run[key] for run in runs
                                   if run["method"] == method and run["size"] == size])
                cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
            table.add_row(method, *cells)
        table.add_row("SemSim shipped, no fine-tuning", *[f"{results['shipped'][key]:.3f}"] * len(sizes))
        tables.append(table)
    table = tables[0]
    summary: dict[str, Any] = {}
    for method in methods:
        for size in sizes:
            chosen = [run for run in runs if run["method"] == method and run["size"] == size]
            auc = np.array([run["auc"] for run in chosen])
            balanced = np.array([run["balanced_accuracy"] for run in chosen])
            summary.setdefault(method, {})[size] = {"auc_mean": auc.mean(), "auc_sd": auc.std(),
                                                    "balanced_mean": balanced.mean(),
                                                    "balanced_sd": balanced.std()}
    # Margin over the better of PSNR and SSIM, per seed (their AUC is fixed; the held-out set is shared).
    pixel_best = max(run["auc"] for run in runs if run["method"] in ("PSNR", "SSIM"))
    for method in (m for m in methods if m.startswith("SemSim")):
        cells = []
        for size in sizes:
            margins = [run["auc"] - pixel_best for run in runs
                       if run["method"] == method and run["size"] == size]
            summary[method][size]["min_margin"] = min(margins)
            cells.append(f"{min(margins):+.3f} {'yes' if min(margins) >= 0.05 else 'no'}")
        table.add_row(f"{method}: worst seed - best of PSNR/SSIM, >= 0.05?", *cells)
    # Training time per SemSim variant and size (mean and max over seeds): what N costs on this machine.
    summary["training_seconds"] = {}
    for method in (m for m in methods if m.startswith("SemSim")):
        for size in sizes:
            times = [run["seconds"] for run in runs if run["method"] == method and run["size"] == size]
            summary["training_seconds"].setdefault(method, {})[size] = {"mean": float(np.mean(times)),
                                                                        "max": float(np.max(times))}
    return tables, summary


def plot(summary: dict[str, Any], sizes: list[int], shipped_auc: float, path: Path) -> None:
    """Learning curves: held-out AUC against training identities, mean ± sd band per method."""
    figure = Figure(figsize=(6.4, 4.2))
    axis = figure.subplots()
    for method, by_size in summary.items():
        if method == "training_seconds":
            continue
        mean = np.array([by_size[s]["auc_mean"] for s in sizes])
        spread = np.array([by_size[s]["auc_sd"] for s in sizes])
        style = "-o" if method.startswith("SemSim") else "--"
        (line,) = axis.plot(sizes, mean, style, label=method)
        if method.startswith("SemSim"):
            axis.fill_between(sizes, mean - spread, mean + spread, alpha=0.2, color=line.get_color())
    axis.axhline(shipped_auc, color="grey", linestyle=":", label="SemSim shipped, no fine-tuning")
    axis.set_xscale("log")
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticks(sizes, [str(s) for s in sizes])
    axis.set_xlabel("annotated training identities (about 10 reconstructions each)")
    axis.set_ylabel("held-out ROC AUC (recognizable vs not)")
    axis.set_title("SemSim sample efficiency (simulated annotator)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_int_list, default=[25, 50, 100, 200, 400],
                        help="training identities per run, comma-separated")
    parser.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="seeds, comma-separated")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the variants that train the whole "
                                                             "network (upper bound with early stopping)")
    parser.add_argument("--heldout", type=int, default=100, help="held-out identities")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"training variants, comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--plot", type=Path, default=Path("semsim_sample_efficiency.png"))
    parser.add_argument("--json", type=Path, default=None, help="also write every run's scores here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep annotation folders and checkpoints")
    args = parser.parse_args()
    if min(args.sizes) < 2:
        parser.error("--sizes: every size must be >= 2 (training needs a validation identity)")
    if args.epochs < 1 or args.heldout < 1:
        parser.error("--epochs and --heldout must be >= 1")
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    console = Console()
    sizes = sorted(set(args.sizes))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="semsim-efficiency-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results = run(sizes, args.seeds, args.epochs, args.heldout, variants, workdir, console)
    tables, summary = summarise(results, sizes)
    for table in tables:
        console.print(table)
    timing = Table(title="training time per run (s), mean / max over seeds, including data loading")
    timing.add_column("method")
    for size in sizes:
        timing.add_column(f"N={size}", justify="right")
    for method, by_size in summary["training_seconds"].items():
        timing.add_row(method, *[f"{by_size[s]['mean']:.0f} / {by_size[s]['max']:.0f}" for s in sizes])
    console.print(timing)
    cuda = "yes" if torch.cuda.is_available() else "no"
    console.print(f"whole-network variants: {args.epochs} epochs max; whole benchmark "
                  f"{time.perf_counter() - start:.0f} s; {torch.get_num_threads()} CPU threads, CUDA {cuda}")
    plot(summary, sizes, results["shipped"]["auc"], args.plot)
    console.print(f"learning curves: {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()},
                                         **results, "summary": summary}, indent=1, default=float))


if __name__ == "__main__":
    main()
