"""Each attack side by side with the published implementation, on the same cases.

Every case builds one victim model and real photo crops (the embedded ``photos`` test split), computes
the client's update the way a client would, and attacks it twice at equal budget: with our engine
(all observations of the case in one batched ``run_attacks`` call) and with the reference — the DLG
authors' L-BFGS loop for ``dlg``/``idlg``, breaching 0.1.2's attacker for the others (one observation
after another, as it runs). Reconstructions are scored like an audit scores them (matched to the
originals, then PSNR, SSIM, SemSim with the shipped checkpoint, label accuracy). A second table
gives throughput in trial-iterations per second for Inverting Gradients on the LeNet at several K.

    python benchmarks/attack_quality.py                      # every case (tens of minutes on 2 CPU cores)
    python benchmarks/attack_quality.py --cases dlg-lenet    # one case
    python benchmarks/attack_quality.py --quick              # tiny budgets: checks that everything runs
    python benchmarks/attack_quality.py --cases dlg-lenet --repeats 3   # wall time over 3 interleaved runs

breaching is installed for the benchmark only: ``pip install breaching==0.1.2 hydra-core lpips``;
without it the breaching columns say "not installed".
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from semsim_audit.attacks import AttackConfig, Observation, run_attacks
from semsim_audit.core import seed_everything, select_device
from semsim_audit.data import load_dataset
from semsim_audit.models import model_for
from semsim_audit.report import format_value
from semsim_audit.scoring import label_accuracy, score_reconstructions
from semsim_audit.semsim import SemSim

try:  # run as a script (python benchmarks/attack_quality.py) or imported by the tests
    from reference_attacks import ReferenceResult, breaching_attack, breaching_available, dlg_reference
except ImportError:  # pragma: no cover - imported as benchmarks.attack_quality
    from benchmarks.reference_attacks import (
        ReferenceResult,
        breaching_attack,
        breaching_available,
        dlg_reference,
    )


@dataclass
class Case:
    """One side-by-side comparison: victim, data, the client's training, our attack and the reference."""

    name: str
    model: str
    attack: str
    reference: str                       # "dlg", "idlg" or a breaching attack config name
    images: int = 4                      # photos attacked in all
    batch: int = 1                       # images per client update
    local_steps: int = 1                 # > 1: FedAvg, the update is a weight delta
    iterations: int = 150
    reference_iterations: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)          # our AttackConfig settings
    reference_overrides: dict[str, Any] = field(default_factory=dict)
    labels_known: bool = False


CASES = [
    # 8 photos: L-BFGS at lr 1 without line search sticks on some images, on either side, depending on
    # float rounding; with 4 the mean PSNR was mostly a matter of which one stuck.
    Case("dlg-lenet", "lenet", "idlg", "idlg", images=8, iterations=300,
         model_options={"uniform_init": True}),
    Case("dlg-joint-lenet", "lenet", "dlg", "dlg", images=8, iterations=300,
         model_options={"uniform_init": True}),
    # Like for like: both sides with a strong-Wolfe line search (torch's own on the reference side).
    Case("dlg-lenet-wolfe", "lenet", "idlg", "idlg", images=8, iterations=300,
         model_options={"uniform_init": True}, reference_overrides={"line_search": "strong_wolfe"}),
    Case("ig-lenet", "lenet", "inverting-gradients", "invertinggradients", images=8, iterations=150),
    Case("ig-convnet", "convnet", "inverting-gradients", "invertinggradients", iterations=150,
         model_options={"width": 32}),
    Case("ig-convnet-batch4", "convnet", "inverting-gradients", "invertinggradients", images=4, batch=4,
         iterations=150, model_options={"width": 32}),
    Case("ig-resnet18", "resnet18", "inverting-gradients", "invertinggradients", images=2, iterations=100),
    Case("ig-resnet18-batch4", "resnet18", "inverting-gradients", "invertinggradients", images=4, batch=4,
         iterations=100),
    Case("gradinversion-resnet18", "resnet18", "gradinversion", "seethroughgradients", images=4, batch=4,
         iterations=200),
    Case("fedavg-lenet", "lenet", "fedavg", "invertinggradients", images=4, batch=2, local_steps=3,
         iterations=150, labels_known=True),
]


def _client_observation(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: Any,
                        local_steps: int, labels_known: bool) -> Observation:
    """What the server sees of a client that trains on ``images``: a gradient, or a FedAvg delta."""
    if local_steps == 1:
        loss = nn.functional.cross_entropy(model(images), labels)
        gradient = torch.autograd.grad(loss, list(model.parameters()))
        return Observation.from_gradients(model, gradient, spec, num_samples=len(images),
                                          labels=labels if labels_known else None)
    client, lr = copy.deepcopy(model), 0.1
    per_step = max(1, len(images) // local_steps) if len(images) >= local_steps else len(images)
    optimizer = torch.optim.SGD(client.parameters(), lr=lr)
    for step in range(local_steps):
        start = (step * per_step) % len(images)
        optimizer.zero_grad()
        chunk = slice(start, start + per_step)
        nn.functional.cross_entropy(client(images[chunk]), labels[chunk]).backward()
        optimizer.step()
    return Observation.from_update(model, model.state_dict(), client.state_dict(), spec, lr=lr,
                                   local_steps=local_steps, batch_size=per_step, num_samples=len(images),
                                   labels=labels if labels_known else None)


def _single(model: nn.Module, photos: Any, index: int) -> Observation:
    image, label = photos[index]
    return _client_observation(model, image[None], torch.tensor([label]), photos.spec, 1, False)


@dataclass
class Scores:
    psnr: float | None
    ssim: float | None
    semsim: float | None
    label_accuracy: float | None
    seconds: float
    recovered: int = 0    # images reconstructed at >= RECOVERED_DB
    images: int = 0


# "Recovered": a reconstruction at this PSNR or more (the DLG setting's converged images reach 50-60 dB).
RECOVERED_DB = 30.0


def _score(reconstructions: torch.Tensor, originals: torch.Tensor, true_labels: torch.Tensor,
           recovered: torch.Tensor | None, semsim: SemSim) -> list[Any]:
    return score_reconstructions(reconstructions, originals, true_labels=true_labels,
                                 recovered_labels=recovered, semsim=semsim)


def _summary(all_scores: list[Any], accuracies: list[float | None], seconds: float) -> Scores:
    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return sum(kept) / len(kept) if kept else None

    return Scores(mean([s.psnr for s in all_scores]), mean([s.ssim for s in all_scores]),
                  mean([s.semsim for s in all_scores]), mean(accuracies), seconds,
                  recovered=sum(s.psnr is not None and s.psnr >= RECOVERED_DB for s in all_scores),
                  images=len(all_scores))


def run_case(case: Case, semsim: SemSim, *, quick: bool, device: torch.device,
             with_reference: bool = True) -> dict[str, Any]:
    seed_everything(0)
    photos = load_dataset("photos", train=False)
    spec = photos.spec
    model = model_for(case.model, spec, **case.model_options)
    iterations = 2 if quick else case.iterations
    reference_iterations = 2 if quick else (case.reference_iterations or case.iterations)
    picks = [(i % 10) * (len(photos) // 10) + i // 10 for i in range(case.images)]
    groups = [picks[i:i + case.batch] for i in range(0, len(picks), case.batch)]
    observations, originals, labels = [], [], []
    for group in groups:
        images = torch.stack([photos[i][0] for i in group])
        truth = torch.tensor([photos[i][1] for i in group])
        observations.append(_client_observation(model, images, truth, spec, case.local_steps,
                                                case.labels_known))
        originals.append(photos.pixels[group])
        labels.append(truth)

    config = AttackConfig(iterations=iterations, seed=0, device=str(device), **case.overrides)
    started = time.perf_counter()
    ours = run_attacks(case.attack, observations, config)
    ours_seconds = time.perf_counter() - started
    ours_scores, ours_accuracy = [], []
    for result, original, truth in zip(ours, originals, labels, strict=True):
        ours_scores += _score(result.images, original, truth, result.labels, semsim)
        ours_accuracy.append(label_accuracy(truth, result.labels))
    row: dict[str, Any] = {"case": case, "ours": _summary(ours_scores, ours_accuracy, ours_seconds),
                           "evaluations": ours[0].evaluations, "iterations": iterations,
                           "reference_iterations": reference_iterations}

    reference: Callable[[Observation, torch.Tensor], ReferenceResult] | None
    if not with_reference:
        reference = None
    elif case.reference in ("dlg", "idlg"):
        def reference(observation: Observation, truth: torch.Tensor) -> ReferenceResult:
            return dlg_reference(observation, steps=reference_iterations,
                                 joint_labels=case.reference == "dlg",
                                 line_search=case.reference_overrides.get("line_search"))
    elif breaching_available():
        def reference(observation: Observation, truth: torch.Tensor) -> ReferenceResult:
            return breaching_attack(observation, attack=case.reference, iterations=reference_iterations,
                                    labels=truth.tolist() if case.labels_known else None,
                                    overrides=case.reference_overrides)
    else:
        reference = None
    if reference is None:
        row["reference"] = None
        return row
    reference_scores, reference_accuracy, reference_seconds = [], [], 0.0
    for observation, original, truth in zip(observations, originals, labels, strict=True):
        result = reference(observation, truth)
        reference_seconds += result.seconds
        reconstructions = spec.denormalize(result.images).clamp(0.0, 1.0)
        reference_scores += _score(reconstructions, original, truth, result.labels, semsim)
        reference_accuracy.append(label_accuracy(truth, result.labels))
    row["reference"] = _summary(reference_scores, reference_accuracy, reference_seconds)
    return row


def throughput(ks: list[int], iterations: int, device: torch.device,
               repeats: int = 3) -> list[dict[str, Any]]:
    """Trial-iterations per second of Inverting Gradients on the LeNet: ours batched vs breaching.

    Each rate is the best of ``repeats`` timed runs (after a warm-up), for both implementations alike, and
    the runs are interleaved (breaching, then ours at every K, then again): on a shared or virtual machine
    a single short run, or a block of runs of one side, mostly measures the neighbours.
    """
    photos = load_dataset("photos", train=False)
    seed_everything(0)
    model = model_for("lenet", photos.spec)
    reference = _single(model, photos, 0) if breaching_available() else None
    batches = {k: [_single(model, photos, i) for i in range(k)] for k in ks}
    config = AttackConfig(iterations=iterations, device=str(device))
    if reference is not None:
        breaching_attack(reference, iterations=2)  # warm-up
    for observations in batches.values():
        run_attacks("inverting-gradients", observations, AttackConfig(iterations=2, device=str(device)))
    best_reference, best = float("inf"), dict.fromkeys(ks, float("inf"))
    for _ in range(repeats):
        if reference is not None:
            best_reference = min(best_reference, breaching_attack(reference, iterations=iterations).seconds)
        for k, observations in batches.items():
            started = time.perf_counter()
            run_attacks("inverting-gradients", observations, config)
            best[k] = min(best[k], time.perf_counter() - started)
    breaching_rate = iterations / best_reference if reference is not None else None  # one trial at a time
    rows = []
    for k in ks:
        rate = k * iterations / best[k]
        rows.append({"k": k, "ours": rate, "breaching": breaching_rate,
                     "ratio": rate / breaching_rate if breaching_rate else None})
    return rows


def _cell(scores: Scores | None, field_name: str, spec: str) -> str:
    if scores is None:  # --no-reference, or breaching not installed (the first line says which)
        return "n/a"
    return format_value(getattr(scores, field_name), spec)


def _recovered(scores: Scores | None) -> str:
    return "n/a" if scores is None else f"{scores.recovered}/{scores.images}"


def print_quality(rows: list[dict[str, Any]]) -> None:
    print("| case | attack (ours / reference) | iterations | PSNR dB ours / ref | SSIM ours / ref | "
          f"SemSim ours / ref | label acc ours / ref | >= {RECOVERED_DB:.0f} dB ours / ref | "
          "seconds ours / ref |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        case, ours, ref = row["case"], row["ours"], row["reference"]
        budget = f"{row['iterations']} / {row['reference_iterations']}"
        print(f"| {case.name} | {case.attack} / {case.reference} | {budget}"
              f" | {_cell(ours, 'psnr', '.1f')} / {_cell(ref, 'psnr', '.1f')}"
              f" | {_cell(ours, 'ssim', '.3f')} / {_cell(ref, 'ssim', '.3f')}"
              f" | {_cell(ours, 'semsim', '.3f')} / {_cell(ref, 'semsim', '.3f')}"
              f" | {_cell(ours, 'label_accuracy', '.2f')} / {_cell(ref, 'label_accuracy', '.2f')}"
              f" | {_recovered(ours)} / {_recovered(ref)}"
              f" | {_cell(ours, 'seconds', '.1f')} / {_cell(ref, 'seconds', '.1f')} |")


def print_throughput(rows: list[dict[str, Any]], iterations: int) -> None:
    print(f"\nInverting Gradients on the LeNet, {iterations} iterations: trial-iterations per second "
          "(best of the timed runs)")
    print("| K | ours | breaching | ours / breaching |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['k']} | {row['ours']:.0f} | {format_value(row['breaching'], '.0f')} | "
              f"{format_value(row['ratio'], '.1f')}x |")


def print_wall_times(runs: list[list[dict[str, Any]]]) -> None:
    """Each case's seconds in every repeat (ours, then the reference, in turn) and the ratio's median.

    This machine's speed drifts by a third within a day, so one run's ratio is partly luck; runs that
    alternate between the two sides see the same drift.
    """
    print(f"\nWall time over {len(runs)} interleaved runs (ours, then the reference, in turn)")
    print("| case | seconds ours | seconds reference | ours / reference | median ratio |")
    print("|---|---|---|---|---|")
    for index, first in enumerate(runs[0]):
        rows = [run[index] for run in runs]
        ours = [row["ours"].seconds for row in rows]
        if any(row["reference"] is None for row in rows):
            theirs, ratios = ["n/a"] * len(rows), []
        else:
            seconds = [row["reference"].seconds for row in rows]
            theirs = [f"{value:.1f}" for value in seconds]
            ratios = [mine / other for mine, other in zip(ours, seconds, strict=True)]
        print(f"| {first['case'].name} | {', '.join(f'{value:.1f}' for value in ours)} | {', '.join(theirs)}"
              f" | {', '.join(f'{ratio:.2f}' for ratio in ratios) or 'n/a'}"
              f" | {format_value(statistics.median(ratios) if ratios else None, '.2f')} |")


def _same_results(runs: list[list[dict[str, Any]]]) -> list[str]:
    """Cases whose scores changed between repeats (the attacks are seeded: they should not)."""
    changed = []
    for index, first in enumerate(runs[0]):
        for run in runs[1:]:
            for side in ("ours", "reference"):
                a, b = first[side], run[index][side]
                if (a is None) != (b is None) or (a is not None and (a.psnr, a.ssim) != (b.psnr, b.ssim)):
                    changed.append(f"{first['case'].name} ({side})")
    return sorted(set(changed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="all", help="comma-separated case names, or 'all' / 'none'")
    parser.add_argument("--throughput", default="1,8,64", help="K values of the throughput table ('' = skip)")
    parser.add_argument("--throughput-iterations", type=int, default=50)
    parser.add_argument("--throughput-repeats", type=int, default=5,
                        help="timed runs per rate, interleaved; the best counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--semsim", default=None, help="SemSim checkpoint (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="2 iterations everywhere: a smoke test")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of our AttackConfig settings in every case (e.g. tv_weight=0.2)")
    parser.add_argument("--no-reference", action="store_true", help="run only our attacks")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the cases this many times, ours and the reference in turn; a wall-time "
                             "table then gives every run's seconds and the median ratio")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if not value or key not in AttackConfig.model_fields:
            parser.error(f"--set {item!r}: expected KEY=VALUE with KEY an AttackConfig field")
        try:  # numbers and booleans as JSON (AttackConfig's counts are strict ints); anything else a string
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    known = [c.name for c in CASES]
    names = known if args.cases == "all" else [] if args.cases == "none" else args.cases.split(",")
    unknown = set(names) - set(known)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    semsim = SemSim.load(args.semsim, device=device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, breaching "
          f"{'installed' if breaching_available() else 'not installed'}")
    runs: list[list[dict[str, Any]]] = []
    for repeat in range(args.repeats):
        rows = []
        for case in (c for c in CASES if c.name in names):
            case = replace(case, overrides={**case.overrides, **overrides})
            rows.append(run_case(case, semsim, quick=args.quick, device=device,
                                 with_reference=not args.no_reference))
            suffix = f" (run {repeat + 1} of {args.repeats})" if args.repeats > 1 else ""
            print(f"  {case.name}: done{suffix}", flush=True)
        runs.append(rows)
    if runs and runs[0]:
        print_quality(runs[0])
        if args.repeats > 1:
            print_wall_times(runs)
            changed = _same_results(runs)
            if changed:
                print(f"scores differ between runs for: {', '.join(changed)} "
                      "(the quality table is the first run's)")
    if args.throughput:
        ks = [int(k) for k in args.throughput.split(",")]
        iterations = 2 if args.quick else args.throughput_iterations
        print_throughput(throughput(ks, iterations, device, args.throughput_repeats), iterations)


if __name__ == "__main__":
    main()
