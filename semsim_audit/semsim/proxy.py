"""Proxy annotations: a reproducible stand-in for human "recognizable / not" labels.

Human annotations cannot be reached from our machines, so the default checkpoint is trained on
images whose label follows from how they were made. Originals are crops of the photographs bundled
with scikit-image and the LFW faces subset. Positives keep the content a person would recognise,
imitating inversion artefacts: shifts and crops, flips, colour and contrast shifts, moderate noise,
mild blur, checkerboard and TV-like (piecewise-flat) artefacts, partial occlusion. Negatives destroy
it: another image (possibly with the same artefacts, as a reconstruction of the wrong image would
be), heavy noise, heavy blur, patch shuffles, blends dominated by another image, and smooth noise
like a non-converged attack. :func:`write_proxy_annotations` writes them in the released layout, so
the same training code reads proxy and human annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from skimage import data as skdata

from semsim_audit.core import resize, save_png
from semsim_audit.data import PHOTO_NAMES, photo_images
from semsim_audit.semsim.artefacts import (
    add_checkerboard,
    add_noise,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    blend,
    blur,
    occlude,
    piecewise_flat,
    scale_channels,
    shift,
    shuffle_patches,
)
from semsim_audit.semsim.simulated import split_region

__all__ = ["POSITIVE_ARTEFACTS", "NEGATIVE_CHANGES", "proxy_originals", "recognizable_variant",
           "unrecognizable_variant", "write_proxy_annotations"]

SIZE = 32
Artefact = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


def photo_crops(photo: torch.Tensor, count: int, rng: np.random.Generator,
                scale: tuple[float, float] = (0.06, 0.8)) -> list[torch.Tensor]:
    """``count`` square crops of random scale and position, resized to 32x32."""
    _, height, width = photo.shape
    crops = []
    for _ in range(count):
        side = max(8, int(min(height, width) * rng.uniform(*scale)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crops.append(resize(photo[:, top:top + side, left:left + side], SIZE))
    return crops


def proxy_originals(crops_per_photo: int, seed: int, faces: bool = True,
                    region: Literal["all", "train"] = "all") -> list[tuple[str, torch.Tensor]]:
    """(class name, (3, 32, 32) image) originals: photo crops, then the LFW faces subset.

    ``region="train"`` crops only the training band of every photograph
    (:func:`semsim_audit.semsim.simulated.split_region`), so nothing held out for evaluation is seen.
    """
    if region not in ("all", "train"):
        raise ValueError(f"region must be 'all' or 'train', got {region!r}")
    rng = np.random.default_rng(seed)
    originals = []
    for number, (name, photo) in enumerate(zip(PHOTO_NAMES, photo_images(), strict=True)):
        if region == "train":
            top, left, bottom, right = split_region(number, "train")
            photo = photo[:, top:bottom, left:right]
        originals += [(name, crop) for crop in photo_crops(photo, crops_per_photo, rng)]
    if faces:
        lfw = torch.from_numpy(np.asarray(skdata.lfw_subset(), dtype=np.float32))
        originals += [("face" if i < 100 else "nonface", resize(face.expand(3, -1, -1), SIZE))
                      for i, face in enumerate(lfw)]
    return originals


# --- content-keeping artefacts ------------------------------------------------------------------

def _shift(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
    return shift(image, dy, dx, margin=3)


def _crop_resize(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    side = int(SIZE * rng.uniform(0.75, 0.95))
    top, left = (int(v) for v in rng.integers(0, SIZE - side + 1, size=2))
    return resize(image[:, top:top + side, left:left + side], SIZE)


def _flip(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return image.flip(-1)


def _colour(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    image = adjust_saturation(image, rng.uniform(0.5, 1.5))
    image = adjust_contrast(image, rng.uniform(0.7, 1.3))
    image = scale_channels(image, rng.uniform(0.85, 1.15, size=3))
    return adjust_brightness(image, rng.uniform(-0.15, 0.15)).clamp(0, 1)


def _noise(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    noise = torch.from_numpy(rng.standard_normal(image.shape)).float()
    return add_noise(image, noise, rng.uniform(0.02, 0.08))


def _mild_blur(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return blur(image, rng.uniform(0.4, 1.0))


def _checkerboard(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    period = int(rng.choice([2, 4]))
    tint = torch.from_numpy(rng.uniform(0.5, 1.0, size=(3, 1, 1))).float()
    return add_checkerboard(image, rng.uniform(0.03, 0.1), period, tint)


def _flat_patches(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    factor = int(rng.choice([2, 4]))
    weight = rng.uniform(0.4, 0.9) if factor == 4 else rng.uniform(0.6, 1.0)
    return blend(image, piecewise_flat(image, SIZE // factor), weight)


def _occlusion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    height, width = (int(v) for v in rng.integers(6, 15, size=2))
    top, left = int(rng.integers(0, SIZE - height + 1)), int(rng.integers(0, SIZE - width + 1))
    fill = torch.from_numpy(rng.uniform(0, 1, size=(3, 1, 1))).float()
    return occlude(image, top, left, height, width, fill)


POSITIVE_ARTEFACTS: dict[str, Artefact] = {
    "shift": _shift, "crop": _crop_resize, "flip": _flip, "colour": _colour, "noise": _noise,
    "blur": _mild_blur, "checkerboard": _checkerboard, "flat": _flat_patches, "occlusion": _occlusion,
}


def recognizable_variant(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """1 to 3 content-keeping artefacts, in random order."""
    names = rng.choice(list(POSITIVE_ARTEFACTS), size=int(rng.integers(1, 4)), replace=False)
    for name in names:
        image = POSITIVE_ARTEFACTS[str(name)](image, rng)
    return image.clamp(0, 1)


# --- content-destroying changes -----------------------------------------------------------------

def _heavy_noise(image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    noise = torch.from_numpy(rng.uniform(0, 1, size=image.shape)).float()
    return blend(image, noise, rng.uniform(0.7, 0.95))


def _heavy_blur(image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return blur(image, rng.uniform(3.5, 6.0))


def _patch_shuffle(image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    patch = int(rng.choice([4, 8]))
    return shuffle_patches(image, patch, rng.permutation((SIZE // patch) ** 2))


def _blend(image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return blend(image, other, rng.uniform(0.65, 0.85))


def _other_image(image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return recognizable_variant(other, rng)


def _not_converged(image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    # An attack stopped early: smooth coloured noise with at most a faint trace of the image.
    noise = blur(torch.from_numpy(rng.uniform(0, 1, size=image.shape)).float(), rng.uniform(0.8, 2.0))
    noise = (noise - noise.amin()) / (noise.amax() - noise.amin() + 1e-8)
    return blend(noise, image, rng.uniform(0.0, 0.15))


# Mean squared pixel change below which a "destroying" change has not destroyed anything.
_MIN_CHANGE = 0.004

NEGATIVE_CHANGES: dict[str, Callable[[torch.Tensor, torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "other-image": _other_image, "heavy-noise": _heavy_noise, "heavy-blur": _heavy_blur,
    "patch-shuffle": _patch_shuffle, "blend": _blend, "not-converged": _not_converged,
}


def unrecognizable_variant(image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator,
                           kind: str | None = None) -> torch.Tensor:
    """One content-destroying change (``kind`` from NEGATIVE_CHANGES, random when None)."""
    kind = kind or str(rng.choice(list(NEGATIVE_CHANGES)))
    changed = NEGATIVE_CHANGES[kind](image, other, rng).clamp(0, 1)
    if (changed - image).pow(2).mean() < _MIN_CHANGE:
        # Blurring or shuffling a flat region changes nothing: such an image is still recognizable.
        changed = _other_image(image, other, rng).clamp(0, 1)
    return changed


def write_proxy_annotations(directory: str | Path, originals: Sequence[tuple[str, torch.Tensor]],
                            seed: int, positives: int = 4, negatives: int = 4, others: int = 200,
                            prefix: str = "") -> Path:
    """Write proxy annotations for ``originals`` in the released layout under ``directory``.

    Identity folders are ``<prefix><number>``, so other annotation sets can share the folder.
    """
    if len(originals) < 2:
        raise ValueError(f"need at least two originals (negatives use other images), got {len(originals)}")
    root = Path(directory)
    rng = np.random.default_rng(seed)
    kinds = list(NEGATIVE_CHANGES)
    for number, (label, image) in enumerate(originals):
        keep = root / "train_with_ori" / f"{prefix}{number}"
        lose = root / "train_with_ori" / f"-{prefix}{number}"
        keep.mkdir(parents=True, exist_ok=True)
        lose.mkdir(parents=True, exist_ok=True)
        save_png(image, keep / f"{number}_{label}_ori.png")
        for k in range(positives):
            save_png(recognizable_variant(image, rng), keep / f"{number}_{label}_{k}.png")
        for k in range(negatives):
            other = originals[(number + int(rng.integers(1, len(originals)))) % len(originals)][1]
            change = kinds[(number + k) % len(kinds)]  # cycle so every identity sees varied negatives
            variant = unrecognizable_variant(image, other, rng, change)
            save_png(variant, lose / f"{number}_{label}_{change}_{k}.png")
    (root / "others").mkdir(parents=True, exist_ok=True)
    for k in range(others):
        first, second = (originals[int(i)][1] for i in rng.integers(0, len(originals), size=2))
        change = str(rng.choice(["heavy-noise", "not-converged", "patch-shuffle", "heavy-blur"]))
        variant = unrecognizable_variant(first, second, rng, change)
        save_png(variant, root / "others" / f"{prefix}other_{k}_{change}.png")
    return root
