"""SemSim speed (pairs scored per second) and quality (SemSim vs PSNR/SSIM AUC on held-out proxy pairs).

    python benchmarks/semsim_throughput.py [--device auto] [--checkpoint PATH] [--skip-eval]

The held-out set is written by the proxy-annotation generator with a seed the default checkpoint
never saw, from photo crops only (the LFW faces are all in its training set).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from semsim_audit.cli.semsim import print_evaluation
from semsim_audit.semsim import SemSim
from semsim_audit.semsim.evaluate import evaluate
from semsim_audit.semsim.proxy import proxy_originals, write_proxy_annotations

HELD_OUT_SEED = 777


def throughput(sem: SemSim, pairs: int, batch_sizes: list[int], repeats: int = 3) -> Table:
    """Pairs per second of ``sem.distance`` at each batch size (best of ``repeats``)."""
    table = Table(title=f"SemSim throughput ({sem.device}, width {sem.metadata.width}, {pairs} pairs)")
    for column in ("batch size", "pairs / s", "ms / pair"):
        table.add_column(column, justify="right")
    originals, reconstructions = torch.rand(pairs, 3, 32, 32), torch.rand(pairs, 3, 32, 32)
    for batch_size in batch_sizes:
        sem.batch_size = batch_size
        sem.distance(originals[:batch_size], reconstructions[:batch_size])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if sem.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            sem.distance(originals, reconstructions)
            if sem.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        table.add_row(str(batch_size), f"{pairs / best:,.0f}", f"{1000 * best / pairs:.3f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--crops-per-photo", type=int, default=20)
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()

    console = Console()
    sem = SemSim.load(args.checkpoint, device=args.device)
    console.print(throughput(sem, args.pairs, [int(b) for b in args.batch_sizes.split(",")]))
    if args.skip_eval:
        return
    with tempfile.TemporaryDirectory(prefix="semsim-heldout-") as folder:
        originals = proxy_originals(args.crops_per_photo, seed=HELD_OUT_SEED, faces=False)
        write_proxy_annotations(folder, originals, seed=HELD_OUT_SEED + 1, others=0)
        sem.batch_size = 256
        print_evaluation(evaluate(folder, sem))


if __name__ == "__main__":
    main()
