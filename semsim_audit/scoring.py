"""The scoring side: the only place where a client's originals meet the attack's reconstructions.

Reconstructions come in unknown order, so they are first matched to originals (Hungarian
assignment on SemSim distance, :func:`semsim_audit.metrics.match`); each matched pair is then
scored with SemSim (distance, recognizable), PSNR, SSIM, LPIPS when available, whether the
original is identifiable from the reconstruction, and the pair's labels.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from semsim_audit import metrics
from semsim_audit.core import save_png
from semsim_audit.report import ClientAudit, ReconstructionScore

__all__ = ["score_reconstructions", "label_accuracy", "score_client", "pair_image_paths"]


def _finite_or_none(value: float) -> float | None:
    """JSON has no inf/NaN: a perfect PSNR (inf) or an undefined score is stored as None."""
    return value if math.isfinite(value) else None


def label_accuracy(true_labels: torch.Tensor, recovered_labels: torch.Tensor) -> float | None:
    """Share of the true labels found among the recovered ones, as multisets (order-free)."""
    true = Counter(int(x) for x in true_labels.reshape(-1).tolist())
    recovered = Counter(int(x) for x in recovered_labels.reshape(-1).tolist())
    total = sum(true.values())
    if total == 0 or not recovered:
        return None
    return sum(min(count, recovered[label]) for label, count in true.items()) / total


def pair_image_paths(server_round: int, node_id: int, index: int) -> tuple[str, str]:
    """Paths (relative to the run folder) of a matched pair's PNGs: (original, reconstruction)."""
    folder = f"images/round-{server_round}/client-{node_id}"
    return f"{folder}/original-{index}.png", f"{folder}/reconstruction-{index}.png"


def score_reconstructions(reconstructions: torch.Tensor, originals: torch.Tensor, *,
                          true_labels: torch.Tensor | None, recovered_labels: torch.Tensor | None,
                          semsim: Any, run_dir: str | Path | None = None,
                          server_round: int = 0, node_id: int = 0) -> list[ReconstructionScore]:
    """Match reconstructions to originals and score every matched pair.

    Both image sets are (N, C, H, W) in [0, 1]. With ``run_dir`` set, each pair is saved as PNGs
    in the run-folder layout and the score records their relative paths.
    """
    for name, images in (("reconstructions", reconstructions), ("originals", originals)):
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty (N, C, H, W) tensor")
    if not bool(torch.isfinite(reconstructions).all()):
        raise ValueError("reconstructions contain NaN or inf")
    reconstructions = reconstructions.detach().float().cpu().clamp(0.0, 1.0)
    originals = originals.detach().float().cpu()
    # One embedding pass: matching, each pair's distance and identifiability all read this matrix.
    distances = semsim.pairwise(originals, reconstructions)
    matching = metrics.match_distances(distances)
    rows, cols = matching.original_index, matching.reconstruction_index
    paired_originals, paired_recons = originals[rows], reconstructions[cols]
    distance = matching.distance
    recognizable = distance <= semsim.threshold
    psnr = metrics.psnr(paired_originals, paired_recons)
    ssim = metrics.ssim(paired_originals, paired_recons)
    lpips = metrics.lpips(paired_originals, paired_recons)
    identified = metrics.identified(distances, matching)
    scores = []
    for k in range(rows.shape[0]):
        row, col = int(rows[k]), int(cols[k])
        score = ReconstructionScore(
            original_index=row,
            semsim=_finite_or_none(float(distance[k])),
            recognizable=bool(recognizable[k]),
            psnr=_finite_or_none(float(psnr[k])),
            ssim=_finite_or_none(float(ssim[k])),
            lpips=None if lpips is None else _finite_or_none(float(lpips[k])),
            true_label=None if true_labels is None else int(true_labels[row]),
            recovered_label=(None if recovered_labels is None or col >= recovered_labels.numel()
                             else int(recovered_labels[col])),
            identified=bool(identified[k]),
        )
        if run_dir is not None:
            original_path, reconstruction_path = pair_image_paths(server_round, node_id, k)
            save_png(paired_originals[k], Path(run_dir) / original_path)
            save_png(paired_recons[k], Path(run_dir) / reconstruction_path)
            score.original_image, score.reconstruction_image = original_path, reconstruction_path
        scores.append(score)
    return scores


def score_client(*, node_id: int, attack: str, result: Any, originals: torch.Tensor,
                 true_labels: torch.Tensor | None, semsim: Any, server_round: int,
                 local_steps: int | None = None, batch_size: int | None = None,
                 run_dir: str | Path | None = None) -> ClientAudit:
    """One client's audit from an ``semsim_audit.attacks.AttackResult``: failed results keep their reason."""
    common = dict(node_id=node_id, attack=attack, num_images=int(originals.shape[0]),
                  local_steps=local_steps, batch_size=batch_size,
                  seconds=float(getattr(result, "seconds", 0.0) or 0.0))
    loss = getattr(result, "loss", None)
    attack_loss = float(loss) if loss is not None and math.isfinite(float(loss)) else None
    if getattr(result, "status", "ok") != "ok":
        return ClientAudit(status="failed", reason=result.reason or "attack failed",
                           attack_loss=attack_loss, **common)
    images = result.images
    if images is None or images.numel() == 0 or not bool(torch.isfinite(images).all()):
        return ClientAudit(status="failed", attack_loss=attack_loss,
                           reason="attack diverged: the reconstruction is empty or not finite", **common)
    scores = score_reconstructions(images, originals, true_labels=true_labels,
                                   recovered_labels=getattr(result, "labels", None), semsim=semsim,
                                   run_dir=run_dir, server_round=server_round, node_id=node_id)
    accuracy = None
    if true_labels is not None and getattr(result, "labels", None) is not None:
        accuracy = label_accuracy(true_labels, result.labels)
    return ClientAudit(status="ok", attack_loss=attack_loss, label_accuracy=accuracy, scores=scores,
                       **common)
