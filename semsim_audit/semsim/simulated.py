"""A simulated annotator: rule-based "recognizable / not" labels, a stand-in for people, NOT human judgement.

It exists so that SemSim training can be benchmarked without human annotations (which cannot be reached
from our machines). It builds identities (distinct crops of the photographs embedded in scikit-image),
about ten reconstruction-like images per identity, and labels each the way a documented rule says a
person would. Numbers measured on it say how a training recipe copes with *this* rule, not with people;
the docs and every benchmark that uses it say so.

The rule. Every reconstruction gets content-keeping *nuisances* that the annotator always tolerates
(a shifted or rescaled re-crop, a horizontal flip, brightness / contrast / saturation / colour-cast /
gamma changes) and, usually, one or two *damages* with a severity: severity 1 is the annotator's
tolerance for that kind of damage, and severities of several damages add up.

=========  ==========================================================  =========================
damage     what it does at severity s                                  tolerated up to (s = 1)
=========  ==========================================================  =========================
noise      additive Gaussian noise, sigma = 0.12 s                     sigma 0.12
blur       Gaussian blur, sigma = 1.0 s pixels at 32x32                 sigma 1 px
tv         piecewise-constant (total-variation-like) artefacts:        10x10 effective pixels
           downsampled to 32 / (1 + 2.2 s) pixels, blocky upsampling,
           plus a faint checkerboard
occlusion  a flat or noisy square covering 25 s % of the image         a quarter of the image
shuffle    16 s/5 (at least 2) of the 4x4 grid patches permuted         3 patches
blend      mixed with another identity's image, weight 0.3 s            30 % of the other image
other      another identity's image (with nuisances)                   never
=========  ==========================================================  =========================

Severities are drawn log-uniformly from [1/4, 4], so they straddle the tolerance and pixel metrics
(PSNR, SSIM) do not separate the classes trivially: a recognizable image with a colour cast and a
shift is far from its original in pixels, a 40 % blend with another image is close. The annotator is
also unsure near its tolerance, as people are: the label is recognizable with probability
``sigmoid(-ln(total severity) / 0.1)`` (about 0.9 at s = 0.8 and 0.1 at s = 1.25), drawn from the seeded
generator.

Identities of the ``train`` split are crops from the first 70 % of every photograph (along its longer
side), those of the ``heldout`` split from the last 30 %: no held-out pixel ever appears in a training
identity, its reconstructions or its negatives. Everything is deterministic given (seed, split, identity
index), and identity ``i`` is the same whatever the number of identities asked for, so smaller sets are
prefixes of larger ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from semsim_audit.core import resize, save_png
from semsim_audit.data import PHOTO_NAMES, photo_images
from semsim_audit.semsim.artefacts import (
    add_checkerboard,
    add_noise,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    adjust_saturation,
    blend,
    blur,
    occlude,
    piecewise_flat,
    scale_channels,
    shuffle_patches,
)

__all__ = [
    "DAMAGES", "TOLERANCE_TEMPERATURE", "SimulatedAnnotations", "simulate_annotations",
    "write_released_layout", "recognizable_probability", "split_region", "split_originals",
]

Split = Literal["train", "heldout"]
IMAGE_SIZE = 32
# Fraction of each photograph's longer side that belongs to the training split; the rest is held out.
TRAIN_FRACTION = 0.7
# Crop side as a fraction of the photograph's shorter side: small enough to fit the held-out band.
CROP_SCALE = (0.12, 0.3)
SEVERITY_RANGE = (0.25, 4.0)
TOLERANCE_TEMPERATURE = 0.1
# How often each damage is drawn ("none" = nuisances only, always recognizable).
DAMAGE_WEIGHTS: dict[str, float] = {
    "none": 0.12, "noise": 0.14, "blur": 0.14, "tv": 0.12, "occlusion": 0.12,
    "shuffle": 0.10, "blend": 0.12, "other": 0.08,
}
DAMAGES: tuple[str, ...] = tuple(name for name in DAMAGE_WEIGHTS if name != "none")
SECOND_DAMAGE_PROBABILITY = 0.25
NUISANCE_PROBABILITY = 0.85
# A negative drawn from another identity must not overlap this one's crop (same photograph) by more.
MAX_NEGATIVE_IOU = 0.1
_SPLIT_CODE = {"train": 1, "heldout": 2}


@dataclass
class SimulatedAnnotations:
    """Originals, their reconstructions and the simulated annotator's labels, all in memory."""

    split: str
    seed: int
    originals: torch.Tensor  # (I, 3, 32, 32) in [0, 1], one per identity
    classes: list[str]  # photograph name of each identity
    boxes: list[tuple[int, int, int, int]]  # (photograph, top, left, side) of each identity's crop
    reconstructions: torch.Tensor  # (R, 3, 32, 32) in [0, 1]
    owners: torch.Tensor  # (R,) identity index of each reconstruction
    recognizable: torch.Tensor  # (R,) bool, the annotator's label
    damages: list[str]  # what was done to each reconstruction, e.g. "noise+blur" or "none"
    severities: torch.Tensor  # (R,) total severity (inf for another identity's image)
    extra_negatives: torch.Tensor = field(default_factory=lambda: torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE))

    @property
    def num_identities(self) -> int:
        return int(self.originals.shape[0])

    def first(self, identities: int) -> SimulatedAnnotations:
        """The first ``identities`` identities and their reconstructions (what a smaller call would build)."""
        if not 1 <= identities <= self.num_identities:
            raise ValueError(f"identities must be in [1, {self.num_identities}], got {identities}")
        keep = self.owners < identities
        return SimulatedAnnotations(
            split=self.split, seed=self.seed, originals=self.originals[:identities],
            classes=self.classes[:identities], boxes=self.boxes[:identities],
            reconstructions=self.reconstructions[keep], owners=self.owners[keep],
            recognizable=self.recognizable[keep], damages=[d for d, k in zip(self.damages, keep.tolist(),
                                                                             strict=True) if k],
            severities=self.severities[keep], extra_negatives=self.extra_negatives)

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(originals, reconstructions, recognizable) aligned per reconstruction, for scoring."""
        return self.originals[self.owners], self.reconstructions, self.recognizable


def recognizable_probability(severity: float) -> float:
    """The annotator's probability of saying "recognizable" for a total damage severity."""
    if severity <= 0:
        return 1.0
    if math.isinf(severity):
        return 0.0
    return 1.0 / (1.0 + math.exp(math.log(severity) / TOLERANCE_TEMPERATURE))


@lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    return tuple(photo_images())


def split_region(photo_index: int, split: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the split's band of photograph ``photo_index``."""
    _, height, width = _photos()[photo_index].shape
    if width >= height:
        cut = int(width * TRAIN_FRACTION)
        return (0, 0, height, cut) if split == "train" else (0, cut, height, width)
    cut = int(height * TRAIN_FRACTION)
    return (0, 0, cut, width) if split == "train" else (cut, 0, height, width)


def _identity_box(seed: int, split: str, index: int) -> tuple[int, int, int, int, int]:
    """(photo, top, left, side, flip) of identity ``index``: a function of (seed, split, index) only."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 0])
    photo_index = int(rng.integers(len(PHOTO_NAMES)))
    photo = _photos()[photo_index]
    top, left, bottom, right = split_region(photo_index, split)
    side = int(min(photo.shape[1:]) * rng.uniform(*CROP_SCALE))
    side = min(side, bottom - top, right - left)
    y = int(rng.integers(top, bottom - side + 1))
    x = int(rng.integers(left, right - side + 1))
    return photo_index, y, x, side, int(rng.integers(2))


def _crop(photo_index: int, y: float, x: float, side: float, split: str) -> torch.Tensor:
    """A square crop clamped inside the split's band, resized to 32x32: (3, 32, 32) in [0, 1]."""
    photo = _photos()[photo_index]
    top, left, bottom, right = split_region(photo_index, split)
    side = int(max(8, min(side, bottom - top, right - left)))
    y = int(min(max(round(y), top), bottom - side))
    x = int(min(max(round(x), left), right - side))
    return resize(photo[:, y:y + side, x:x + side], IMAGE_SIZE)


def _original(seed: int, split: str, index: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    photo_index, y, x, side, flip = _identity_box(seed, split, index)
    image = _crop(photo_index, y, x, side, split)
    return (image.flip(-1) if flip else image), (photo_index, y, x, side)


def split_originals(count: int, split: Split, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """The originals of identities ``0 .. count - 1`` of a split, (count, 3, 32, 32), and their photographs.

    The same crops :func:`simulate_annotations` uses, without building their reconstructions.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    crops = [_original(seed, split, index) for index in range(count)]
    return torch.stack([image for image, _ in crops]), [box[0] for _, box in crops]


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    if a[0] != b[0]:
        return 0.0
    _, ay, ax, aside = a
    _, by, bx, bside = b
    height = max(0, min(ay + aside, by + bside) - max(ay, by))
    width = max(0, min(ax + aside, bx + bside) - max(ax, bx))
    inter = height * width
    return inter / (aside * aside + bside * bside - inter)


def _other_identity(seed: int, split: str, box: tuple[int, int, int, int], rng: np.random.Generator) -> int:
    """Index of some other identity of the same split whose crop does not overlap ``box``."""
    while True:
        candidate = int(rng.integers(1_000_000))
        if _iou(box, _original(seed, split, candidate)[1]) <= MAX_NEGATIVE_IOU:
            return candidate


def _nuisance(seed: int, split: str, index: int, rng: np.random.Generator) -> torch.Tensor:
    """The identity's crop with only tolerated changes: re-crop (shift, scale), flip, colour, gamma."""
    photo_index, y, x, side, flip = _identity_box(seed, split, index)
    scale = rng.uniform(0.85, 1.15)
    new_side = side * scale
    image = _crop(photo_index, y + rng.uniform(-0.15, 0.15) * side + (side - new_side) / 2,
                  x + rng.uniform(-0.15, 0.15) * side + (side - new_side) / 2, new_side, split)
    if flip != (rng.random() < 0.25):  # the annotator does not care which way round the image is
        image = image.flip(-1)
    if rng.random() < 0.5:
        image = adjust_brightness(image, rng.uniform(-0.2, 0.2))
    if rng.random() < 0.5:
        image = adjust_contrast(image, rng.uniform(0.6, 1.5))
    if rng.random() < 0.5:
        image = adjust_saturation(image, rng.uniform(0.3, 1.5))
    if rng.random() < 0.5:
        image = scale_channels(image, rng.uniform(0.8, 1.2, size=3))
    if rng.random() < 0.3:
        image = adjust_gamma(image, rng.uniform(0.7, 1.4))
    return image.clamp(0, 1)


def _damage(image: torch.Tensor, name: str, severity: float, rng: np.random.Generator,
            other: torch.Tensor) -> torch.Tensor:
    """Apply one damage of the given severity (1 = the annotator's tolerance) to a (3, 32, 32) image."""
    if name == "noise":
        noise = torch.from_numpy(rng.standard_normal(image.shape)).float()
        return add_noise(image, noise, 0.12 * severity)
    if name == "blur":
        return blur(image, 1.0 * severity)
    if name == "tv":
        cells = max(2, round(IMAGE_SIZE / (1 + 2.2 * severity)))
        return add_checkerboard(piecewise_flat(image, cells), 0.03)
    if name == "occlusion":
        side = max(2, round(IMAGE_SIZE * math.sqrt(min(0.95, 0.25 * severity))))
        y, x = (int(v) for v in rng.integers(0, IMAGE_SIZE - side + 1, size=2))
        shape = (3, 1, 1) if rng.random() < 0.5 else (3, side, side)  # a flat colour or noise
        return occlude(image, y, x, side, side, torch.from_numpy(rng.uniform(0, 1, size=shape)).float())
    if name == "shuffle":
        moved = int(min(16, max(2, round(16 * severity / 5))))
        chosen = rng.choice(16, size=moved, replace=False)
        # A derangement of the chosen patches of the 4x4 grid: each one ends up somewhere else.
        target = np.roll(chosen, 1 + int(rng.integers(moved - 1)) if moved > 2 else 1)
        order = np.arange(16)
        order[target] = chosen
        return shuffle_patches(image, IMAGE_SIZE // 4, order)
    if name == "blend":
        return blend(image, other, min(0.95, 0.3 * severity)).clamp(0, 1)
    raise ValueError(f"unknown damage {name!r}; known damages: {', '.join(DAMAGES)}")


def _reconstruction(seed: int, split: str, index: int, number: int) -> tuple[torch.Tensor, str, float, bool]:
    """Reconstruction ``number`` of identity ``index``: (image, damages, total severity, label)."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1 + number])
    original, box = _original(seed, split, index)
    names = list(DAMAGE_WEIGHTS)
    weights = np.array([DAMAGE_WEIGHTS[n] for n in names])
    first = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if first == "other":
        other = _other_identity(seed, split, box, rng)
        image = (_nuisance(seed, split, other, rng) if rng.random() < NUISANCE_PROBABILITY
                 else _original(seed, split, other)[0])
        return image, "other", math.inf, False
    image = _nuisance(seed, split, index, rng) if rng.random() < NUISANCE_PROBABILITY else original
    if first == "none":
        return image, "none", 0.0, True
    applied = [first]
    if rng.random() < SECOND_DAMAGE_PROBABILITY:
        second = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        if second not in ("none", "other", first):
            applied.append(second)
    total = 0.0
    for name in applied:
        severity = float(np.exp(rng.uniform(*np.log(SEVERITY_RANGE))))
        other = image
        if name == "blend":
            other = _original(seed, split, _other_identity(seed, split, box, rng))[0]
        image = _damage(image, name, severity, rng, other)
        total += severity
    label = bool(rng.random() < recognizable_probability(total))
    return image, "+".join(applied), total, label


def simulate_annotations(identities: int, *, split: Split = "train", per_identity: int = 10, seed: int = 0,
                         extra_negatives: int = 0) -> SimulatedAnnotations:
    """Build ``identities`` identities with ``per_identity`` reconstructions each, labelled by the rule above.

    ``extra_negatives`` images of unrelated crops of the same split go to the released layout's ``others/``.
    """
    if identities < 1:
        raise ValueError(f"identities must be >= 1, got {identities}")
    if per_identity < 1:
        raise ValueError(f"per_identity must be >= 1, got {per_identity}")
    if extra_negatives < 0:
        raise ValueError(f"extra_negatives must be >= 0, got {extra_negatives}")
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    originals, classes, boxes, images, owners, labels, damages, severities = ([] for _ in range(8))
    for index in range(identities):
        original, box = _original(seed, split, index)
        originals.append(original)
        classes.append(PHOTO_NAMES[box[0]])
        boxes.append(box)
        for number in range(per_identity):
            image, damage, severity, label = _reconstruction(seed, split, index, number)
            images.append(image)
            owners.append(index)
            labels.append(label)
            damages.append(damage)
            severities.append(severity)
    # Extra negatives: crops of the same split beyond any index used for identities or their negatives.
    extras = [_original(seed, split, 1_000_000 + k)[0] for k in range(extra_negatives)]
    return SimulatedAnnotations(
        split=split, seed=seed, originals=torch.stack(originals), classes=classes, boxes=boxes,
        reconstructions=torch.stack(images), owners=torch.tensor(owners, dtype=torch.long),
        recognizable=torch.tensor(labels, dtype=torch.bool), damages=damages,
        severities=torch.tensor(severities, dtype=torch.float64),
        extra_negatives=torch.stack(extras) if extras else torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE),
    )


def write_released_layout(annotations: SimulatedAnnotations, root: str | Path,
                          identity_names: Sequence[str] | None = None) -> Path:
    """Write the annotations in the released layout under ``root`` and return ``root``.

    ``train_with_ori/<id>/`` holds ``<id>_<class>_ori.png`` and the recognizable reconstructions,
    ``train_with_ori/-<id>/`` the unrecognizable ones, ``others/`` the extra negatives, and
    ``simulated_annotator.json`` what was done to every file (the annotator's record, for analysis).
    """
    root = Path(root)
    names = list(identity_names) if identity_names is not None else [str(i) for i in
                                                                      range(annotations.num_identities)]
    if len(names) != annotations.num_identities or len(set(names)) != len(names):
        raise ValueError(f"identity_names must be {annotations.num_identities} distinct names, "
                         f"got {len(names)}")
    base = root / "train_with_ori"
    base.mkdir(parents=True, exist_ok=True)
    records = []
    for index, name in enumerate(names):
        folder = base / name
        folder.mkdir(exist_ok=True)
        save_png(annotations.originals[index], folder / f"{name}_{annotations.classes[index]}_ori.png")
    for number in range(annotations.reconstructions.shape[0]):
        index = int(annotations.owners[number])
        label = bool(annotations.recognizable[number])
        folder = base / (names[index] if label else f"-{names[index]}")
        folder.mkdir(exist_ok=True)
        file = folder / f"{names[index]}_{number}.png"
        save_png(annotations.reconstructions[number], file)
        severity = float(annotations.severities[number])
        records.append({"file": file.relative_to(root).as_posix(), "identity": names[index],
                        "recognizable": label, "damage": annotations.damages[number],
                        "severity": severity if math.isfinite(severity) else None})
    if annotations.extra_negatives.shape[0]:
        others = root / "others"
        others.mkdir(exist_ok=True)
        for number, image in enumerate(annotations.extra_negatives):
            save_png(image, others / f"other_{number}.png")
    manifest = {"annotator": "simulated (rule-based stand-in for people, not human judgement)",
                "split": annotations.split, "seed": annotations.seed, "reconstructions": records}
    (root / "simulated_annotator.json").write_text(json.dumps(manifest, indent=1))
    return root
