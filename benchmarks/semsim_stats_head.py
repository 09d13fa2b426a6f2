"""Probe: a projection head on multi-layer feature statistics of a frozen ResNet-18, vs PSNR/SSIM.

    python benchmarks/semsim_stats_head.py [--sizes 25,50,100,200] [--seeds 0,1,2] [--widths 16,32]
        [--backbone random|default]

Exploratory (issue 9), not yet what ``semsim-audit semsim train`` does. The backbone is frozen, either
randomly initialised from the seed (``random``) or the shipped checkpoint's (``default``); each image is
summarised by the per-channel mean and standard deviation of the stem and of every ResNet stage,
standardised with the training images' statistics, and a two-layer MLP maps that to a 64-d embedding
that is L2-normalised, as SemSim's are. The head is trained with a logistic loss on the pair distance
(recognizable pairs close, unrecognizable far) on the simulated annotator's training identities; the
held-out set is the one of ``semsim_sample_efficiency.py`` (100 identities, seed 1000, a band of every
photograph no training identity touches). The annotator is a rule-based stand-in for people.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from attacks.runtime import normalize
from semsim_audit import metrics
from semsim_audit.semsim.calibration import roc_auc
from semsim_audit.semsim.checkpoint import load_checkpoint
from semsim_audit.semsim.model import NORMALISATION, SemSimNet, prepare_images
from semsim_audit.semsim.scorer import DEFAULT_CHECKPOINT
from semsim_audit.semsim.simulated import SimulatedAnnotations, simulate_annotations

HELDOUT_SEED = 1000


@torch.no_grad()
def statistics(model: SemSimNet, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Per-channel mean and std of the stem and of each ResNet stage: (N, 2 * 15 * width)."""
    backbone = model.eval().backbone
    out = []
    for start in range(0, len(images), batch):
        pixels = prepare_images(images[start:start + batch])
        h = backbone.relu(backbone.bn1(backbone.conv1(normalize(pixels, NORMALISATION["mean"],
                                                                NORMALISATION["std"]))))
        parts = [h.mean((2, 3)), h.std((2, 3))]
        for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            h = stage(h)
            parts += [h.mean((2, 3)), h.std((2, 3))]
        out.append(torch.cat(parts, 1))
    return torch.cat(out)


def pair_features(model: SemSimNet, data: SimulatedAnnotations) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of every original and reconstruction: (originals, reconstructions) aligned per pair."""
    originals = statistics(model, data.originals)
    return originals[data.owners], statistics(model, data.reconstructions)


def train_head(first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor, seed: int,
               epochs: int = 30, hidden: int = 256, dim: int = 64) -> nn.Module:
    """Fit the MLP head with a logistic loss on the distance of L2-normalised embeddings."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(first.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, dim))
    offset_scale = nn.Parameter(torch.tensor([4.0, 8.0]))
    optimizer = torch.optim.Adam([*head.parameters(), offset_scale], lr=1e-3, weight_decay=1e-4)
    targets = labels.float()
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(labels)))
        for start in range(0, len(order), 128):
            chosen = order[start:start + 128]
            distance = (F.normalize(head(first[chosen]), dim=1)
                        - F.normalize(head(second[chosen]), dim=1)).norm(dim=1)
            loss = F.binary_cross_entropy_with_logits(offset_scale[0] - offset_scale[1] * distance,
                                                      targets[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_ints, default=[25, 50, 100, 200])
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--widths", type=_ints, default=[16, 32])
    parser.add_argument("--backbone", choices=("random", "default"), default="random")
    parser.add_argument("--heldout", type=int, default=100)
    args = parser.parse_args()
    console = Console()
    begin = time.perf_counter()
    heldout = simulate_annotations(args.heldout, split="heldout", seed=HELDOUT_SEED)
    originals, reconstructions, heldout_labels = heldout.pairs()
    labels = heldout_labels.numpy()
    pixel = {"PSNR": roc_auc(metrics.psnr(originals, reconstructions).clamp(max=100).numpy(), labels),
             "SSIM": roc_auc(metrics.ssim(originals, reconstructions).numpy(), labels)}
    best_pixel = max(pixel.values())
    widths = [0] if args.backbone == "default" else args.widths
    scores: dict[tuple[int, int], list[float]] = {}
    seconds: list[float] = []
    for seed in args.seeds:
        pool = simulate_annotations(max(args.sizes), seed=seed)
        for width in widths:
            if args.backbone == "default":
                model, _ = load_checkpoint(DEFAULT_CHECKPOINT)
            else:
                torch.manual_seed(seed)
                model = SemSimNet(width=width)
            held_first, held_second = pair_features(model, heldout)
            for size in args.sizes:
                start = time.perf_counter()
                subset = pool.first(size)
                first, second = pair_features(model, subset)
                features = torch.cat([statistics(model, subset.originals), second])
                mean, std = features.mean(0), features.std(0) + 1e-6
                head = train_head((first - mean) / std, (second - mean) / std, subset.recognizable, seed)
                seconds.append(time.perf_counter() - start)
                with torch.no_grad():
                    distance = (F.normalize(head((held_first - mean) / std), dim=1)
                                - F.normalize(head((held_second - mean) / std), dim=1)).norm(dim=1)
                auc = roc_auc(-distance.numpy(), labels)
                scores.setdefault((width, size), []).append(auc)
                console.log(f"seed {seed} width {width or 'shipped'} N={size}: held-out AUC {auc:.3f}")
    table = Table(title=f"held-out ROC AUC, frozen {args.backbone} backbone + stats head "
                        f"({labels.size} pairs; simulated annotator, not people)")
    table.add_column("method")
    for size in args.sizes:
        table.add_column(f"N={size}", justify="right")
    for name, value in pixel.items():
        table.add_row(name, *[f"{value:.3f}"] * len(args.sizes))
    for width in widths:
        label = "shipped backbone" if width == 0 else f"random width-{width} backbone"
        cells = [f"{np.mean(scores[width, s]):.3f} ± {np.std(scores[width, s]):.3f}" for s in args.sizes]
        table.add_row(f"{label}: mean ± sd", *cells)
        table.add_row(f"{label}: worst seed - best pixel metric",
                      *[f"{min(scores[width, s]) - best_pixel:+.3f}" for s in args.sizes])
    console.print(table)
    console.print(f"head training incl. feature extraction: mean {np.mean(seconds):.1f} s, max "
                  f"{np.max(seconds):.1f} s per run; whole probe {time.perf_counter() - begin:.0f} s; "
                  f"{torch.get_num_threads()} CPU threads")


if __name__ == "__main__":
    main()
