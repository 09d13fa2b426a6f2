"""Per-pair image metrics on [0, 1] images (N, C, H, W), plus SemSim matching and identifiability.

Direction of each score:

- ``mse``: [0, 1], lower = more similar.
- ``psnr``: dB, higher = more similar; ``inf`` for identical images (peak value 1.0).
- ``ssim``: [-1, 1], higher = more similar (scikit-image, 7x7 uniform window, data range 1.0).
- ``lpips``: >= 0, lower = more similar; ``None`` unless the ``lpips`` package and its AlexNet
  weights are already on this machine (nothing is downloaded), with one logged note.
- ``identifiability``: per reconstruction, is its nearest original by SemSim its own original?
- ``match``: Hungarian assignment (scipy) of reconstructions to originals by SemSim distance; an
  attack returns its batch in arbitrary order, so pairs must be matched before they are scored.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity
from torchvision.models import AlexNet_Weights

__all__ = ["mse", "psnr", "ssim", "lpips", "Matching", "match", "match_distances",
           "identifiability", "identified", "PairwiseDistance"]

logger = logging.getLogger(__name__)


def _check_pairs(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    for name, images in (("originals", originals), ("reconstructions", reconstructions)):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name} must be an (N, C, H, W) tensor, got {shape}")
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals and reconstructions must have the same shape, got "
                         f"{tuple(originals.shape)} and {tuple(reconstructions.shape)}")


def mse(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pair (N,); lower = more similar."""
    _check_pairs(originals, reconstructions)
    difference = originals.detach().double().cpu() - reconstructions.detach().double().cpu()
    return difference.pow(2).flatten(1).mean(dim=1).float()


def psnr(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per pair (N,) in dB for peak 1.0; higher = more similar."""
    error = mse(originals, reconstructions).double()
    return (10.0 * torch.log10(1.0 / error)).float()  # error 0 gives +inf, as scikit-image does


def ssim(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Structural similarity per pair (N,) via scikit-image; higher = more similar."""
    _check_pairs(originals, reconstructions)
    side = min(originals.shape[-2:])
    if side < 3:
        raise ValueError(f"ssim needs images of at least 3x3 pixels, got {tuple(originals.shape[-2:])}")
    window = min(7, side if side % 2 else side - 1)  # scikit-image needs an odd window within the image
    first = originals.detach().double().cpu().numpy()
    second = reconstructions.detach().double().cpu().numpy()
    scores = [structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=window)
              for a, b in zip(first, second, strict=True)]
    return torch.tensor(np.asarray(scores), dtype=torch.float32)


@functools.cache
def _lpips_model() -> Any:
    """The LPIPS (AlexNet) model when the package and its weights are present, else None (noted once)."""
    try:
        import lpips as lpips_package  # an optional extra: absent unless installed with [lpips]
    except ImportError:
        logger.warning("LPIPS: n/a (install the 'lpips' extra to report it)")
        return None
    weights_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    if not weights_file.is_file():
        logger.warning("LPIPS: n/a (AlexNet weights not found at %s; nothing is downloaded)", weights_file)
        return None
    try:
        return lpips_package.LPIPS(net="alex", verbose=False).eval()
    except Exception as error:  # a broken install must cost the column, not the audit
        logger.warning("LPIPS: n/a (%s)", error)
        return None


@torch.no_grad()
def lpips(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor | None:
    """LPIPS distance per pair (N,) (lower = more similar), or None when LPIPS is not available."""
    _check_pairs(originals, reconstructions)
    model = _lpips_model()
    if model is None:
        return None

    def prepare(images: torch.Tensor) -> torch.Tensor:
        images = images.detach().float().cpu()
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return images * 2.0 - 1.0  # LPIPS takes [-1, 1]

    return model(prepare(originals), prepare(reconstructions)).flatten()


class PairwiseDistance(Protocol):
    """What matching needs of a judge (SemSim): an (M, N) distance matrix, originals x reconstructions."""

    def pairwise(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor: ...


class Matching(NamedTuple):
    """Matched pairs: ``originals[original_index[k]]`` goes with ``reconstructions[reconstruction_index[k]]``.

    ``distance[k]`` is that pair's SemSim distance.
    """

    original_index: torch.Tensor
    reconstruction_index: torch.Tensor
    distance: torch.Tensor


def match(originals: torch.Tensor, reconstructions: torch.Tensor, semsim: PairwiseDistance) -> Matching:
    """Pair reconstructions with originals minimising the total SemSim distance (Hungarian).

    Pairs are sorted by original index. With equal counts, ``reconstruction_index`` is the
    permutation that aligns the batch: ``reconstructions[m.reconstruction_index]`` pairs with
    ``originals``. With unequal counts, ``min(M, N)`` pairs are returned.
    """
    return match_distances(semsim.pairwise(originals, reconstructions))


def match_distances(distances: torch.Tensor) -> Matching:
    """:func:`match` on an already computed (M, N) SemSim distance matrix (originals x reconstructions)."""
    rows, columns = linear_sum_assignment(distances.double().numpy())
    rows_t, columns_t = torch.from_numpy(rows).long(), torch.from_numpy(columns).long()
    return Matching(rows_t, columns_t, distances[rows_t, columns_t])


def identified(distances: torch.Tensor, matching: Matching) -> torch.Tensor:
    """Per matched pair (K,) bool: among ALL originals, is the reconstruction's nearest one its own?"""
    nearest = distances.argmin(dim=0)
    return nearest[matching.reconstruction_index] == matching.original_index


def identifiability(originals: torch.Tensor, reconstructions: torch.Tensor,
                    semsim: PairwiseDistance) -> torch.Tensor:
    """Per pair i (N,) bool: is original i the nearest original, by SemSim, to reconstruction i?"""
    if originals.shape[0] != reconstructions.shape[0]:
        raise ValueError(f"originals and reconstructions must pair up: {originals.shape[0]} vs "
                         f"{reconstructions.shape[0]} images")
    count = reconstructions.shape[0]
    pairs = Matching(torch.arange(count), torch.arange(count), torch.zeros(count))
    return identified(semsim.pairwise(originals, reconstructions), pairs)
