"""The scoring side: the only place where a client's originals meet the attack's reconstructions.

Reconstructions come in unknown order, so they are first matched to originals (Hungarian
assignment on SemSim distance, :func:`semsim_audit.metrics.match`); each matched pair is then
scored with SemSim (distance, recognizable), PSNR, SSIM, LPIPS when available, whether the
original is identifiable from the reconstruction, and the pair's labels.

In a Flower run this happens on the client that owns the originals; the server sends its SemSim
checkpoint along when it is not the one shipped in the package (:func:`judge_checkpoint`,
:func:`load_judge`), so both sides judge with the same network and threshold.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from semsim_audit import metrics
from semsim_audit.core import save_png
from semsim_audit.report import ClientAudit, ReconstructionScore
from semsim_audit.semsim import DEFAULT_CHECKPOINT, SemSim, save_checkpoint

__all__ = ["score_reconstructions", "label_accuracy", "score_client", "pair_image_paths",
           "save_pair_images", "judge_checkpoint", "load_judge"]


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


def save_pair_images(run_dir: str | Path, server_round: int, node_id: int,
                     scores: Sequence[ReconstructionScore], reconstructions: torch.Tensor,
                     originals: torch.Tensor | None = None) -> None:
    """Save each scored pair's reconstruction (and original, when given) as PNGs; record the paths.

    ``reconstructions`` are the attack's, indexed by ``score.reconstruction_index``; ``originals``,
    when the client exported them, are in the order of ``scores``.
    """
    for k, score in enumerate(scores):
        original_path, reconstruction_path = pair_image_paths(server_round, node_id, k)
        if score.reconstruction_index is not None:
            save_png(reconstructions[score.reconstruction_index], Path(run_dir) / reconstruction_path)
            score.reconstruction_image = reconstruction_path
        if originals is not None:
            save_png(originals[k], Path(run_dir) / original_path)
            score.original_image = original_path


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
    # Judges without a calibrated band (older checkpoints, stand-ins) leave the flag unknown.
    borderline = semsim.borderline(distance) if hasattr(semsim, "borderline") else None
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
            borderline=None if borderline is None else bool(borderline[k]),
            psnr=_finite_or_none(float(psnr[k])),
            ssim=_finite_or_none(float(ssim[k])),
            lpips=None if lpips is None else _finite_or_none(float(lpips[k])),
            true_label=None if true_labels is None else int(true_labels[row]),
            recovered_label=(None if recovered_labels is None or col >= recovered_labels.numel()
                             else int(recovered_labels[col])),
            identified=bool(identified[k]),
            reconstruction_index=col,
        )
        scores.append(score)
    if run_dir is not None:
        save_pair_images(run_dir, server_round, node_id, scores, reconstructions, paired_originals)
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
                       scored_on="server", **common)


def judge_checkpoint(semsim: SemSim) -> tuple[str, bytes | None]:
    """(sha256 of the weights, checkpoint file bytes) of the judge the server scores with.

    The bytes are None for the checkpoint shipped in the package: every client has it. Any other
    judge (a trained checkpoint, a network built in memory) travels as a safetensors file.
    """
    if not isinstance(semsim, SemSim):
        raise ValueError(f"semsim must be a semsim_audit.SemSim, got {type(semsim).__name__}")
    path = semsim.path
    if path is not None and path.is_file() and semsim.metadata.sha256:
        if path.resolve() == DEFAULT_CHECKPOINT.resolve():
            return semsim.metadata.sha256, None
        return semsim.metadata.sha256, path.read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "judge.safetensors"
        meta = semsim.metadata
        saved = save_checkpoint(file, semsim.model.cpu(), threshold=meta.threshold, annotator=meta.annotator,
                                data=meta.data, training=meta.training, calibration=meta.calibration,
                                borderline_band=meta.borderline_band)
        semsim.model.to(semsim.device)
        return saved.sha256, file.read_bytes()


def load_judge(sha256: str, checkpoint: bytes | None, device: str = "auto") -> SemSim:
    """The judge named by ``sha256``: from ``checkpoint`` bytes, or the one shipped in the package.

    Loading never unpickles (safetensors) and checks the weights against their recorded sha256.
    Raises ValueError when the judge is neither sent nor the shipped one.
    """
    if checkpoint is None:
        shipped = SemSim.load(device=device)
        if shipped.metadata.sha256 != sha256:
            raise ValueError(f"the server's SemSim checkpoint (sha256 {sha256[:12]}) was not sent and is not "
                             "the one shipped in the package: client and server run different semsim-audit "
                             "versions")
        return shipped
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "judge.safetensors"
        file.write_bytes(checkpoint)
        judge = SemSim.load(file, device=device)
    if judge.metadata.sha256 != sha256:
        raise ValueError(f"the SemSim checkpoint sent has sha256 {judge.metadata.sha256[:12]}, "
                         f"the request names {sha256[:12]}")
    judge.path = None  # the temporary file is gone
    return judge
