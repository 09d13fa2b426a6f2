"""SemSim's verdict on real reconstructions: does the judge agree with unambiguous labels, without
calling noise a leak?

    OMP_NUM_THREADS=2 python benchmarks/semsim_verdict.py [--images 24] [--noise 512]
        [--cache /tmp/semsim-attack-outputs] [--checkpoint NAME=FILE ...] [--rebuild-checkpoint OUT]
        [--simulated-identities 1000] [--json results.json]

Three held-out sets, none of them used to train or calibrate the shipped default:

1. **Real attack outputs.** Every registered attack, at several budgets, on LeNet, ConvNet and
   ResNet-18, reconstructing crops from the held-out band of every photograph
   (``benchmarks/semsim_attack_outputs.py``; the default trains on the other band). Only unambiguous
   pairs are kept, by measured PSNR (:func:`semsim_audit.semsim.attack_outputs.unambiguous_pairs`):
   recognizable = converged outputs (>= 35 dB) and their shift, flip, colour cast and mild blur; not
   recognizable = outputs of the first iterations that still measure as noise, and any output scored
   against an original from another photograph.
2. **The simulated annotator's held-out split** (1,000 identities, 10,000 pairs, seed 1000; its first
   100 identities are the split of ``benchmarks/semsim_sample_efficiency.py``): a rule-based stand-in
   for people, with its own label noise near its tolerance (its "rule" row is the best any judge can do
   there). A judge's balanced accuracy there comes with a 95 % interval (identities resampled): on 100
   identities that interval is about +-0.025, too wide to tell 0.84 from the 0.85 target.
3. **Pure noise**: ``--noise`` attack initialisations (an attack's first candidate: one step of
   1e-9 from its random start), under two normalisations, each scored against a held-out original.

Per judge: ROC AUC and balanced accuracy at the checkpoint's threshold on sets 1 and 2, and the
false-positive rate on noise-like outputs (the early outputs of set 1, and set 3). PSNR, SSIM (and
LPIPS where installed) have no threshold: their balanced accuracy uses the best threshold for the very
set it is measured on, an optimistic bound. ``--rebuild-checkpoint OUT`` first rebuilds the default
checkpoint from the training band (attack outputs of the ``train`` split, then
``semsim_audit.semsim.default_checkpoint``) and judges it too: the one command that remakes it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from semsim_attack_outputs import SPEC, generate, victim_observation
from semsim_sample_efficiency import pixel_distances

from semsim_audit.attacks import AttackConfig, run_attack
from semsim_audit.core import DataSpec
from semsim_audit.semsim import (
    DEFAULT_CHECKPOINT,
    PROXY_V1_CHECKPOINT,
    PROXY_V2_CHECKPOINT,
    PROXY_V3_CHECKPOINT,
    SemSim,
)
from semsim_audit.semsim.attack_outputs import AttackOutputs, LabelledPairs, unambiguous_pairs
from semsim_audit.semsim.calibration import balanced_accuracy, calibrate_threshold, roc_auc
from semsim_audit.semsim.default_checkpoint import build_default_checkpoint
from semsim_audit.semsim.simulated import simulate_annotations, split_originals

SIMULATED_HELDOUT = {"identities": 1000, "seed": 1000}
# Resamples of the simulated identities behind a balanced accuracy's 95 % interval.
BOOTSTRAP_DRAWS = 1000
# A CIFAR-like normalisation beside the photos' one: attack starts differ in how much noise saturates.
NOISE_SPECS = {
    "photos": SPEC,
    "cifar10": DataSpec(shape=(3, 32, 32), num_classes=10, mean=(0.4914, 0.4822, 0.4465),
                        std=(0.2470, 0.2435, 0.2616)),
}
TARGET_MARGIN, TARGET_BALANCED = 0.05, 0.85


def attack_initialisations(count: int, cache: Path) -> torch.Tensor:
    """``count`` attack starting points in [0, 1] (N, 3, 32, 32), half under each normalisation.

    Inverting Gradients with one step of lr 1e-9 returns its random start (seeded by the attack seed),
    boxed into the valid pixel range, as the engine draws it: a reconstruction that has learnt nothing.
    """
    path = cache / f"initialisations-{count}.safetensors"
    if path.is_file():
        return AttackOutputs.load(path).outputs
    image = split_originals(1, "heldout", seed=0)[0][0]
    starts = []
    for number in range(count):
        spec = list(NOISE_SPECS.values())[number % len(NOISE_SPECS)]
        observation = victim_observation("lenet", "inverting-gradients", image, 0, seed=number, spec=spec)
        result = run_attack("inverting-gradients", observation,
                            AttackConfig(iterations=1, lr=1e-9, seed=number, device="cpu"))
        starts.append(result.images)
    images = torch.cat(starts)
    AttackOutputs(split="noise", originals=images[:1], photos=[0], outputs=images,
                  owners=torch.zeros(count, dtype=torch.long), attacks=["inverting-gradients"] * count,
                  models=["lenet"] * count, iterations=torch.ones(count, dtype=torch.long)).save(path)
    return images


def _judge(distances: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict[str, float]:
    """AUC, and balanced accuracy at ``threshold`` (None: the best threshold for these very pairs)."""
    if threshold is None:
        threshold, best = calibrate_threshold(distances, labels)
        return {"auc": roc_auc(-distances, labels), "balanced_accuracy": best, "threshold": threshold,
                "fitted_here": True}
    return {"auc": roc_auc(-distances, labels),
            "balanced_accuracy": balanced_accuracy(distances <= threshold, labels), "threshold": threshold,
            "fitted_here": False}


def identity_interval(called: np.ndarray, labels: np.ndarray, owners: np.ndarray,
                      draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the balanced accuracy of ``called``, resampling identities (``owners``).

    Pairs of one identity share an original, so they are resampled together.
    """
    identities, members = np.unique(owners, return_inverse=True)
    by_identity = [np.flatnonzero(members == k) for k in range(identities.size)]
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        chosen = np.concatenate([by_identity[k] for k in rng.integers(0, identities.size, identities.size)])
        scores.append(balanced_accuracy(called[chosen], labels[chosen]))
    low, high = np.percentile(scores, [2.5, 97.5])
    return float(low), float(high)


def evaluate(judges: dict[str, SemSim], real: LabelledPairs, simulated: Any, noise_originals: torch.Tensor,
             noise: torch.Tensor) -> dict[str, Any]:
    """Every judge and pixel metric on the three held-out sets."""
    real_set = (real.originals, real.reconstructions, real.recognizable.numpy())
    sim_originals, sim_reconstructions, sim_labels = simulated.pairs()
    sim_set = (sim_originals, sim_reconstructions, sim_labels.numpy())
    sets = {"real": real_set, "simulated": sim_set,
            "all": (torch.cat([real_set[0], sim_set[0]]), torch.cat([real_set[1], sim_set[1]]),
                    np.concatenate([real_set[2], sim_set[2]]))}
    early = np.asarray([kind == "early" for kind in real.kinds])
    results: dict[str, Any] = {"rows": {}, "kinds": {}}
    pixel = {name: pixel_distances(originals, reconstructions)
             for name, (originals, reconstructions, _) in sets.items()}
    pixel_noise = pixel_distances(noise_originals, noise)
    for metric in pixel["real"]:
        row: dict[str, Any] = {}
        for name, (_, _, labels) in sets.items():
            row[name] = _judge(pixel[name][metric], labels, None)
        threshold = row["real"]["threshold"]
        called = pixel["real"][metric] <= threshold
        results.setdefault("pixel_kinds", {})[metric] = {
            kind: float(called[[k == kind for k in real.kinds]].mean()) for kind in dict.fromkeys(real.kinds)}
        row["fpr_early"] = float((pixel["real"][metric][early] <= threshold).mean())
        row["fpr_noise"] = float((pixel_noise[metric] <= threshold).mean())
        results["rows"][metric] = row
    for label, judge in judges.items():
        row = {"threshold": judge.threshold, "band": judge.borderline_band}
        distances = {}
        for name, (originals, reconstructions, labels) in sets.items():
            distances[name] = judge.distance(originals, reconstructions).numpy()
            row[name] = _judge(distances[name], labels, judge.threshold)
        row["simulated"]["balanced_accuracy_ci"] = identity_interval(
            distances["simulated"] <= judge.threshold, sets["simulated"][2], simulated.owners.numpy())
        row["fpr_early"] = float((distances["real"][early] <= judge.threshold).mean())
        noise_distance = judge.distance(noise_originals, noise).numpy()
        row["fpr_noise"] = float((noise_distance <= judge.threshold).mean())
        row["noise_recognizable"] = int((noise_distance <= judge.threshold).sum())
        row["noise_min_distance"] = float(noise_distance.min())
        results["rows"][f"SemSim {label}"] = row
        called = distances["real"] <= judge.threshold
        per_kind: dict[str, list[bool]] = defaultdict(list)
        for kind, verdict in zip(real.kinds, called.tolist(), strict=True):
            per_kind[kind].append(verdict)
        results["kinds"][f"SemSim {label}"] = {kind: float(np.mean(v)) for kind, v in per_kind.items()}
    results["kind_counts"] = {kind: real.kinds.count(kind) for kind in dict.fromkeys(real.kinds)}
    severity = simulated.severities.numpy()
    results["simulated_rule_balanced_accuracy"] = balanced_accuracy(severity < 1.0, sim_labels.numpy())
    results["pairs"] = {name: {"pairs": int(labels.size), "recognizable": int(labels.sum())}
                        for name, (_, _, labels) in sets.items()}
    results["pairs"]["noise"] = {"pairs": int(noise.shape[0]), "recognizable": 0}
    return results


def composition(outputs: AttackOutputs, pairs: LabelledPairs) -> list[dict[str, Any]]:
    """Per (victim, attack, budget): outputs, median PSNR, converged, early noise kept."""
    psnr = outputs.psnr
    rows = []
    for source in dict.fromkeys(f"{m}/{a}/{int(i)}" for m, a, i in zip(outputs.models, outputs.attacks,
                                                                       outputs.iterations, strict=True)):
        chosen = torch.tensor([f"{m}/{a}/{int(i)}" == source for m, a, i in
                               zip(outputs.models, outputs.attacks, outputs.iterations, strict=True)])
        kinds = [kind for kind, s in zip(pairs.kinds, pairs.sources, strict=True) if s == source]
        rows.append({"source": source, "outputs": int(chosen.sum()),
                     "median_psnr": float(psnr[chosen].median()), "converged": kinds.count("converged"),
                     "early": kinds.count("early")})
    return rows


def _cell(judged: dict[str, Any]) -> tuple[str, str]:
    mark = "*" if judged.get("fitted_here") else ""
    interval = judged.get("balanced_accuracy_ci")
    spread = f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
    return f"{judged['auc']:.3f}", f"{judged['balanced_accuracy']:.3f}{mark}{spread}"


def tables(results: dict[str, Any]) -> list[Table]:
    """The verdict table, the per-kind table and the composition table."""
    pairs = results["pairs"]
    verdict = Table(title=f"Held-out verdict: real attack outputs ({pairs['real']['pairs']} pairs, "
                          f"{pairs['real']['recognizable']} recognizable), simulated annotator "
                          f"({pairs['simulated']['pairs']} pairs), {pairs['noise']['pairs']} attack "
                          f"initialisations")
    for column in ("judge", "threshold", "real AUC", "real bal. acc.", "simulated AUC", "simulated bal. acc.",
                   "all AUC", "all bal. acc.", "FPR early outputs", "FPR initialisations"):
        verdict.add_column(column, justify="left" if column == "judge" else "right")
    for name, row in results["rows"].items():
        threshold = f"{row['real']['threshold']:.3f}" if name.startswith("SemSim") else "fitted*"
        verdict.add_row(name, threshold, *_cell(row["real"]), *_cell(row["simulated"]), *_cell(row["all"]),
                        f"{row['fpr_early']:.3f}", f"{row['fpr_noise']:.3f}")
    kinds = Table(title="Real attack outputs: share called recognizable, per kind of pair")
    kinds.add_column("judge")
    for kind, count in results["kind_counts"].items():
        kinds.add_column(f"{kind} ({count})", justify="right")
    for name, shares in results["kinds"].items():
        kinds.add_row(name, *[f"{shares[kind]:.2f}" for kind in results["kind_counts"]])
    for name in ("PSNR", "SSIM"):
        kinds.add_row(f"{name} (threshold fitted*)",
                      *[f"{results['pixel_kinds'][name][kind]:.2f}" for kind in results["kind_counts"]])
    made = Table(title="Real attack outputs (held-out band): what each attack produced")
    for column in ("victim/attack/budget", "outputs", "median PSNR dB", "converged (>= 35 dB)",
                   "early noise"):
        made.add_column(column, justify="left" if column.startswith("victim") else "right")
    for row in results["composition"]:
        made.add_row(row["source"], str(row["outputs"]), f"{row['median_psnr']:.1f}", str(row["converged"]),
                     str(row["early"]))
    return [verdict, kinds, made]


def targets(results: dict[str, Any], judge: str) -> list[str]:
    """The issue's targets for one judge, each with its measured margin."""
    row = results["rows"][f"SemSim {judge}"]
    lines = []
    for name in ("real", "simulated", "all"):
        pixel = max(results["rows"][m][name]["auc"] for m in ("PSNR", "SSIM"))
        margin = row[name]["auc"] - pixel
        balanced = row[name]["balanced_accuracy"]
        interval = row[name].get("balanced_accuracy_ci")
        spread = f", 95 % interval {interval[0]:.3f}-{interval[1]:.3f}" if interval else ""
        lines.append(f"{judge} on {name}: AUC {row[name]['auc']:.3f} vs max(PSNR, SSIM) {pixel:.3f}: "
                     f"{margin:+.3f} ({_met(margin >= TARGET_MARGIN)}, target +{TARGET_MARGIN}; at most "
                     f"{1 - pixel:+.3f} is possible); balanced accuracy {balanced:.3f}{spread} "
                     f"({_met(balanced >= TARGET_BALANCED)}, target {TARGET_BALANCED})")
    lines.append(f"{judge}: {row['noise_recognizable']} of {results['pairs']['noise']['pairs']} attack "
                 f"initialisations called recognizable (target 0; closest distance "
                 f"{row['noise_min_distance']:.3f}, threshold {row['threshold']:.3f})")
    return lines


def _met(condition: bool) -> str:
    return "met" if condition else "NOT met"


def _checkpoint_option(value: str) -> tuple[str, Path]:
    name, _, path = value.partition("=")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {value!r}")
    return name, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="held-out originals attacked (LeNet; fewer on "
                                                                  "the larger victims)")
    parser.add_argument("--noise", type=int, default=512, help="attack initialisations tried (>= 500)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/semsim-attack-outputs"),
                        help="attack outputs are kept here and reused")
    parser.add_argument("--checkpoint", type=_checkpoint_option, action="append", default=[],
                        help="also judge this checkpoint: NAME=FILE (repeatable)")
    parser.add_argument("--rebuild-checkpoint", type=Path, default=None,
                        help="first rebuild the default checkpoint into this file (the shipped one: "
                             "semsim_audit/semsim/checkpoints/semsim-proxy-v4.safetensors) and judge it")
    parser.add_argument("--simulated-identities", type=int, default=SIMULATED_HELDOUT["identities"],
                        help="identities of the simulated annotator's held-out split (10 pairs each; the "
                             "first 100 are the sample-efficiency benchmark's split)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.simulated_identities < 10:
        parser.error(f"--simulated-identities must be at least 10, got {args.simulated_identities}")
    console = Console(width=160)
    start = time.perf_counter()
    if args.rebuild_checkpoint is not None:
        train_outputs = generate("train", args.images, args.cache, device=args.device, log=console.print)
        rebuilt = build_default_checkpoint(args.rebuild_checkpoint, train_outputs, progress=False).metadata
        console.print(f"rebuilt {args.rebuild_checkpoint}: threshold {rebuilt.threshold:.4f}, borderline "
                      f"band {rebuilt.borderline_band}, calibration {rebuilt.calibration}")
    judges = {"proxy-v1 (first default)": SemSim.load(PROXY_V1_CHECKPOINT, device="cpu"),
              "proxy-v2": SemSim.load(PROXY_V2_CHECKPOINT, device="cpu"),
              "proxy-v3 (previous default)": SemSim.load(PROXY_V3_CHECKPOINT, device="cpu"),
              "default": SemSim.load(DEFAULT_CHECKPOINT, device="cpu")}
    if args.rebuild_checkpoint is not None and args.rebuild_checkpoint.resolve() != DEFAULT_CHECKPOINT:
        judges["rebuilt"] = SemSim.load(args.rebuild_checkpoint, device="cpu")
    for name, path in args.checkpoint:
        judges[name] = SemSim.load(path, device="cpu")
    outputs = generate("heldout", args.images, args.cache, device=args.device, log=console.print)
    real = unambiguous_pairs(outputs)
    simulated = simulate_annotations(args.simulated_identities, split="heldout",
                                     seed=SIMULATED_HELDOUT["seed"])
    noise = attack_initialisations(args.noise, args.cache)
    console.print(f"{noise.shape[0]} attack initialisations ready ({time.perf_counter() - start:.0f} s)")
    noise_originals, _ = split_originals(64, "heldout", seed=SIMULATED_HELDOUT["seed"])
    noise_originals = noise_originals[torch.arange(args.noise) % noise_originals.shape[0]]
    results = evaluate(judges, real, simulated, noise_originals, noise)
    results["composition"] = composition(outputs, real)
    results["judges"] = {name: {"file": str(judge.path), "sha256": judge.metadata.sha256,
                                "calibration": judge.calibration} for name, judge in judges.items()}
    for table in tables(results):
        console.print(table)
    console.print("* PSNR/SSIM/LPIPS have no threshold: their balanced accuracy uses the best threshold for "
                  "the very pairs it is measured on (optimistic), and their FPRs that threshold fitted on "
                  "the real pairs.")
    console.print(f"simulated annotator's own rule (damage severity < its tolerance) reaches balanced "
                  f"accuracy {results['simulated_rule_balanced_accuracy']:.3f} on its held-out labels: the "
                  f"ceiling there.")
    for name in judges:
        for line in targets(results, name):
            console.print(line)
    console.print(f"{time.perf_counter() - start:.0f} s; attack outputs: {args.cache}; LPIPS: "
                  f"{'yes' if 'LPIPS' in results['rows'] else 'n/a (not installed here)'}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
