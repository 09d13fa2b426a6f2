"""Batched vs one-after-another attack throughput: trial-iterations per second, peak memory, PSNR.

Inverting Gradients on K FedSGD observations (one real photo each, one shared global model, as in
one Flower round): once as a single ``run_attacks`` batch, once as K ``run_attack`` calls with the
same engine and seeds. Prints a table; the PSNR columns must agree (same trials, same seeds).

    python benchmarks/attack_throughput.py --model convnet --ks 1,4,16,64 --iterations 100

``--sweep lenet,convnet,resnet18`` instead prints one markdown table of batched rates for every
model and K (what ``benchmarks/gpu.sh`` records on a GPU).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable

import torch
from torch import nn

from semsim_audit.attacks import AttackConfig, Observation, run_attack, run_attacks
from semsim_audit.core import select_device
from semsim_audit.data import load_dataset
from semsim_audit.models import model_for


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak, or sampled resident set size on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, baseline: int) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss() - baseline)
            time.sleep(0.002)

    def measure(self, work: Callable[[], object]) -> object:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            baseline = torch.cuda.memory_allocated(self.device)
            result = work()
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - baseline
            return result
        sampler = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
        sampler.start()
        try:
            return work()
        finally:
            self._stop.set()
            sampler.join()


def _psnr(reconstructions: torch.Tensor, originals: torch.Tensor) -> float:
    mse = (reconstructions - originals).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


def _observations(model: nn.Module, count: int) -> tuple[list[Observation], torch.Tensor]:
    photos = load_dataset("photos")
    indices = [(i % 10) * 64 + i // 10 for i in range(count)]  # round-robin over the 10 classes
    observations = []
    for index in indices:
        image, label = photos[index]
        loss = nn.functional.cross_entropy(model(image[None]), torch.tensor([label]))
        gradient = torch.autograd.grad(loss, list(model.parameters()))
        observations.append(Observation.from_gradients(model, gradient, photos.spec))
    return observations, photos.pixels[indices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet", choices=["convnet", "lenet", "resnet18"])
    parser.add_argument("--sweep", default=None,
                        help="comma-separated models: batched rates only, one markdown table")
    parser.add_argument("--width", type=int, default=16, help="ConvNet width (channels of the first block)")
    parser.add_argument("--ks", default="1,4,16,64", help="comma-separated numbers of observations")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-sequential-above", type=int, default=None,
                        help="skip the one-after-another run for larger K (reports n/a)")
    args = parser.parse_args()

    device = select_device(args.device)
    torch.manual_seed(0)
    spec = load_dataset("photos").spec
    if args.sweep:
        sweep([name.strip() for name in args.sweep.split(",")], [int(k) for k in args.ks.split(",")],
              args.iterations, args.width, device)
        return
    options = {"width": args.width} if args.model == "convnet" else {}
    model = model_for(args.model, spec, **options)
    config = AttackConfig(iterations=args.iterations, restarts=1, seed=0, device=args.device)
    ks = [int(k) for k in args.ks.split(",")]
    # Warm-up: first use of torch.func pays one-off import and dispatch costs.
    warm, _ = _observations(model, 1)
    run_attack("inverting-gradients", warm[0], AttackConfig(iterations=2, device=args.device))

    name = f"{args.model}-{args.width}" if args.model == "convnet" else args.model
    print(f"Inverting Gradients, {name}, {args.iterations} iterations, 1 restart, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print("rates in trial-iterations/s: wall clock, and process CPU time (robust on a shared machine)")
    header = (f"{'K':>4} {'batched':>9} {'sequential':>11} {'speed-up':>9} {'cpu batched':>12} "
              f"{'cpu seq':>9} {'cpu speed-up':>13} {'peak MiB b/s':>14} {'PSNR b/s':>13}")
    print(header)
    print("-" * len(header))
    for k in ks:
        observations, originals = _observations(model, k)
        batched = _timed(device, lambda obs=observations: run_attacks("inverting-gradients", obs, config))
        row = _Row(k, args.iterations, batched, originals)
        if args.skip_sequential_above is None or k <= args.skip_sequential_above:
            row.sequential = _timed(device, lambda obs=observations: [
                run_attack("inverting-gradients", o, config) for o in obs])
        print(row.format(), flush=True)


def sweep(models: list[str], ks: list[int], iterations: int, width: int, device: torch.device) -> None:
    """Batched Inverting Gradients rates for every model and K, as one markdown table."""
    spec = load_dataset("photos").spec
    print(f"Inverting Gradients, {iterations} iterations, 1 restart, device {device}")
    print("| model | K | trial-iterations/s | ms per batched iteration | peak MiB |")
    print("|---|---|---|---|---|")
    for name in models:
        torch.manual_seed(0)
        model = model_for(name, spec, **({"width": width} if name == "convnet" else {}))
        warm, _ = _observations(model, 1)
        run_attack("inverting-gradients", warm[0], AttackConfig(iterations=2, device=str(device)))
        config = AttackConfig(iterations=iterations, seed=0, device=str(device))
        for k in ks:
            observations, _ = _observations(model, k)
            run = _timed(device, lambda obs=observations, cfg=config:
                         run_attacks("inverting-gradients", obs, cfg))
            print(f"| {name} | {k} | {k * iterations / run.wall:.0f} | {1e3 * run.wall / iterations:.1f} | "
                  f"{run.peak_bytes / 2**20:.0f} |", flush=True)


class _Run:
    """Results, wall seconds, process CPU seconds and peak memory of one measured call."""

    def __init__(self, results: list, wall: float, cpu: float, peak_bytes: int) -> None:
        self.results, self.wall, self.cpu, self.peak_bytes = results, wall, cpu, peak_bytes


def _timed(device: torch.device, work: Callable[[], list]) -> _Run:
    memory = PeakMemory(device)
    wall, cpu = time.perf_counter(), time.process_time()
    results = memory.measure(work)
    return _Run(results, time.perf_counter() - wall, time.process_time() - cpu,  # type: ignore[arg-type]
                memory.peak_bytes)


class _Row:
    """One line of the table: batched vs one-after-another for K observations."""

    def __init__(self, k: int, iterations: int, batched: _Run, originals: torch.Tensor) -> None:
        self.k, self.iterations, self.batched, self.originals = k, iterations, batched, originals
        self.sequential: _Run | None = None

    def _rates(self, run: _Run) -> tuple[float, float, float, float]:
        trial_iterations = self.k * self.iterations
        psnr = _psnr(torch.cat([r.images for r in run.results]), self.originals)
        return trial_iterations / run.wall, trial_iterations / run.cpu, run.peak_bytes / 2**20, psnr

    def format(self) -> str:
        wall_b, cpu_b, peak_b, psnr_b = self._rates(self.batched)
        if self.sequential is None:
            return (f"{self.k:>4} {wall_b:>9.1f} {'n/a':>11} {'n/a':>9} {cpu_b:>12.1f} {'n/a':>9} "
                    f"{'n/a':>13} {f'{peak_b:.0f}/n/a':>14} {f'{psnr_b:.2f}/n/a':>13}")
        wall_s, cpu_s, peak_s, psnr_s = self._rates(self.sequential)
        return (f"{self.k:>4} {wall_b:>9.1f} {wall_s:>11.1f} {wall_b / wall_s:>8.1f}x {cpu_b:>12.1f} "
                f"{cpu_s:>9.1f} {cpu_b / cpu_s:>12.1f}x {f'{peak_b:.0f}/{peak_s:.0f}':>14} "
                f"{f'{psnr_b:.2f}/{psnr_s:.2f}':>13}")

if __name__ == "__main__":
    main()
