"""How faithful a metric is to the annotators: SemSim against PSNR, SSIM and LPIPS on annotated pairs.

Per image: every (original, reconstruction) pair of the annotation folder, labelled recognizable or
not by its folder. Each metric is judged by its ROC AUC at telling the two apart (oriented so that
"more similar" predicts recognizable) and its balanced accuracy. SemSim's balanced accuracy uses the
checkpoint's own threshold (a fair, held-out number when the folder was not used to calibrate it);
every metric also gets its best balanced accuracy with a threshold chosen on this very data (an
optimistic bound, the only one PSNR/SSIM/LPIPS can have since they come without a threshold).

Per configuration (when ``configurations.csv`` says which configuration made each reconstruction,
see :mod:`semsim_audit.semsim.annotations`), as in the paper: the human score of a configuration is the
fraction of its reconstructions judged unrecognizable; each metric's per-configuration mean is
correlated with it (Spearman, Pearson, Kendall; signed, so SemSim distance should correlate positively
and PSNR/SSIM negatively). Needs at least three configurations.

All metrics are computed on the 32x32 RGB images SemSim sees. :func:`evaluate` reads an annotation
folder in the released layout; :func:`evaluate_pairs` takes the pairs themselves (the CLI builds them
from a run folder labelled with ``semsim-audit annotate``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from semsim_audit import metrics
from semsim_audit.semsim.annotations import load_image, read_annotations
from semsim_audit.semsim.calibration import balanced_accuracy, calibrate_threshold, roc_auc
from semsim_audit.semsim.scorer import SemSim

__all__ = ["evaluate", "evaluate_pairs", "HIGHER_IS_SIMILAR"]

# Orientation of each metric: does a higher value mean "more similar"?
HIGHER_IS_SIMILAR = {"semsim": False, "psnr": True, "ssim": True, "lpips": False}


def _pairs(data: str | Path) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str | None]]:
    annotations = read_annotations(data)
    originals, reconstructions, labels, configurations = [], [], [], []
    for identity in annotations.identities:
        original = load_image(identity.original)
        for verdict, paths in ((True, identity.recognizable), (False, identity.unrecognizable)):
            for path in paths:
                originals.append(original)
                reconstructions.append(load_image(path))
                labels.append(verdict)
                configurations.append(annotations.configurations.get(path.resolve()))
    if not labels:
        raise ValueError(f"--data {data}: no reconstructions to evaluate")
    return torch.stack(originals), torch.stack(reconstructions), np.asarray(labels), configurations


def _metric_scores(semsim: SemSim, originals: torch.Tensor, reconstructions: torch.Tensor,
                   use_lpips: bool) -> dict[str, np.ndarray]:
    scores = {
        "semsim": semsim.distance(originals, reconstructions).numpy(),
        "psnr": metrics.psnr(originals, reconstructions).numpy(),
        "ssim": metrics.ssim(originals, reconstructions).numpy(),
    }
    perceptual = metrics.lpips(originals, reconstructions) if use_lpips else None
    if perceptual is not None:
        scores["lpips"] = perceptual.numpy()
    return scores


def _per_image(name: str, values: np.ndarray, labels: np.ndarray, semsim: SemSim) -> dict[str, Any]:
    similarity = values if HIGHER_IS_SIMILAR[name] else -values
    finite = np.nan_to_num(similarity, posinf=1e12, neginf=-1e12)  # PSNR of an exact copy is +inf
    _, best = calibrate_threshold(-finite, labels)  # calibrate_threshold expects "lower = similar"
    row: dict[str, Any] = {"auc": roc_auc(similarity, labels), "balanced_accuracy_best": best,
                           "mean_recognizable": float(np.mean(values[labels])),
                           "mean_unrecognizable": float(np.mean(values[~labels]))}
    if name == "semsim":
        row["balanced_accuracy"] = balanced_accuracy(values <= semsim.threshold, labels)
        row["threshold"] = semsim.threshold
        borderline = semsim.borderline(torch.as_tensor(values))
        if borderline is not None:
            inside = borderline.numpy()
            row["borderline"] = int(inside.sum())
            outside = ~inside
            # How sure the verdict is away from the threshold, where it matters (needs both labels there).
            row["accuracy_outside_band"] = (float(((values <= semsim.threshold) == labels)[outside].mean())
                                            if outside.any() else None)
    return row


def _per_configuration(scores: dict[str, np.ndarray], labels: np.ndarray,
                       configurations: list[str | None]) -> dict[str, Any] | None:
    groups: dict[str, list[int]] = defaultdict(list)
    for position, configuration in enumerate(configurations):
        if configuration is not None:
            groups[configuration].append(position)
    if len(groups) < 3:
        return None
    names = sorted(groups)
    human = np.asarray([1.0 - labels[groups[n]].mean() for n in names])  # fraction unrecognizable
    table: dict[str, Any] = {"configurations": {n: {"pairs": len(groups[n]), "human_score": float(h)}
                                                for n, h in zip(names, human, strict=True)},
                             "correlation": {}}
    for metric, values in scores.items():
        finite = np.where(np.isfinite(values), values, np.nan)
        means = np.asarray([np.nanmean(finite[groups[n]]) for n in names])
        for name, mean in zip(names, means, strict=True):
            table["configurations"][name][metric] = float(mean)
        constant = np.ptp(means) == 0 or np.ptp(human) == 0
        table["correlation"][metric] = {
            "spearman": None if constant else float(spearmanr(human, means).statistic),
            "pearson": None if constant else float(pearsonr(human, means).statistic),
            "kendall": None if constant else float(kendalltau(human, means).statistic),
        }
    return table


def evaluate(data: str | Path, semsim: SemSim, *, use_lpips: bool = True) -> dict[str, Any]:
    """Score every annotated pair in the annotation folder ``data`` and judge each metric against it."""
    originals, reconstructions, labels, configurations = _pairs(data)
    return evaluate_pairs(originals, reconstructions, labels, semsim, configurations=configurations,
                          data=str(data), use_lpips=use_lpips)


def evaluate_pairs(originals: torch.Tensor, reconstructions: torch.Tensor, labels: np.ndarray,
                   semsim: SemSim, *, configurations: list[str | None] | None = None, data: str = "pairs",
                   use_lpips: bool = True) -> dict[str, Any]:
    """Judge each metric on labelled pairs: ``originals[i]`` vs ``reconstructions[i]``, ``labels[i]`` True
    when the pair was judged recognizable; ``configurations[i]`` says what made reconstruction i."""
    labels = np.asarray(labels, dtype=bool)
    if labels.size != originals.shape[0] or labels.size != reconstructions.shape[0]:
        raise ValueError(f"{data}: {originals.shape[0]} originals, {reconstructions.shape[0]} "
                         f"reconstructions and {labels.size} labels do not pair up")
    if labels.all() or not labels.any():
        raise ValueError(f"{data}: needs both recognizable and unrecognizable reconstructions")
    configurations = configurations if configurations is not None else [None] * labels.size
    scores = _metric_scores(semsim, originals, reconstructions, use_lpips)
    return {
        "data": data,
        "checkpoint": semsim.info,
        "pairs": int(labels.size),
        "recognizable": int(labels.sum()),
        "lpips": "lpips" in scores,
        "per_image": {name: _per_image(name, values, labels, semsim) for name, values in scores.items()},
        "per_configuration": _per_configuration(scores, labels, configurations),
    }
