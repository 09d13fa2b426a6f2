"""Reading human (or proxy) annotations in the released SemSim layout.

Layout (``DIR`` or ``DIR/human_anno_id``)::

    train_with_ori/<id>/    <idx>_<class>_ori.png (the original) + reconstructions judged recognizable
    train_with_ori/-<id>/   reconstructions of the same original judged unrecognizable
    others/                 extra negatives (unrelated or unrecognizable images)
    configurations.csv      optional: which configuration made each reconstruction

Folder membership is the label. ``configurations.csv`` is our addition for per-configuration
evaluation: a header ``path,configuration`` and one row per reconstruction, ``path`` relative to the
folder that holds ``train_with_ori`` (e.g. ``train_with_ori/-12/3_cat_ig.png,ig-resnet18-noise``).
Reconstructions it does not list have no configuration.

Every image is loaded as RGB and resized to 32x32, the resolution SemSim sees.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from semsim_audit.semsim.model import prepare_images

__all__ = ["IMAGE_SUFFIXES", "Identity", "Annotations", "read_annotations", "load_image", "split_identities"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Identity:
    """One original and its reconstructions, split by the annotators' verdict."""

    name: str
    original: Path
    recognizable: list[Path] = field(default_factory=list)
    unrecognizable: list[Path] = field(default_factory=list)


@dataclass
class Annotations:
    """An annotation folder: identities, extra negatives, and optional configuration labels."""

    root: Path
    identities: list[Identity]
    others: list[Path]
    configurations: dict[Path, str]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_root(directory: Path) -> Path:
    for candidate in (directory, directory / "human_anno_id"):
        if (candidate / "train_with_ori").is_dir():
            return candidate
    raise ValueError(f"--data {directory}: no train_with_ori/ folder (nor human_anno_id/train_with_ori/); "
                     f"expected the released SemSim annotation layout")


def read_annotations(directory: str | Path) -> Annotations:
    """Index an annotation folder; raises ValueError when it holds no usable identity."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"--data {directory}: not a directory")
    root = _find_root(directory)
    folders = {p.name: p for p in (root / "train_with_ori").iterdir() if p.is_dir()}
    identities, orphans = [], 0
    for name in sorted(n for n in folders if not n.startswith("-")):
        images = _images_in(folders[name])
        originals = [p for p in images if p.stem.endswith("_ori")]
        if len(originals) != 1:
            logger.warning("skipping identity %s: %d '_ori' images (need exactly one)", name, len(originals))
            orphans += 1
            continue
        negatives = folders.get(f"-{name}")
        identities.append(Identity(
            name=name, original=originals[0],
            recognizable=[p for p in images if p != originals[0]],
            unrecognizable=_images_in(negatives) if negatives is not None else []))
    orphans += sum(1 for n in folders if n.startswith("-") and n[1:] not in folders)
    if orphans:
        logger.warning("%d annotation folders skipped (no original or no matching identity)", orphans)
    if not identities:
        raise ValueError(f"--data {directory}: train_with_ori/ holds no identity folder with an '_ori' image")
    others = _images_in(root / "others") if (root / "others").is_dir() else []
    return Annotations(root=root, identities=identities, others=others,
                       configurations=_read_configurations(root))


def _read_configurations(root: Path) -> dict[Path, str]:
    table = root / "configurations.csv"
    if not table.is_file():
        return {}
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "configuration"} <= set(reader.fieldnames):
            raise ValueError(f"{table}: needs a header with columns 'path' and 'configuration'")
        return {(root / row["path"]).resolve(): row["configuration"] for row in reader
                if row.get("path") and row.get("configuration")}


def load_image(path: Path) -> torch.Tensor:
    """One image file as a (3, 32, 32) float tensor in [0, 1]."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255.0)
    return prepare_images(pixels.unsqueeze(0), name=str(path))[0]


def split_identities(identities: list[Identity], val_fraction: float,
                     seed: int) -> tuple[list[Identity], list[Identity]]:
    """Seeded split by identity: no original appears on both sides. At least one stays in training."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(identities))
    count = min(int(round(val_fraction * len(identities))), len(identities) - 1)
    chosen = set(order[:count].tolist())
    train = [ident for i, ident in enumerate(identities) if i not in chosen]
    val = [ident for i, ident in enumerate(identities) if i in chosen]
    return train, val
