"""Datasets that need no download, torchvision datasets, users' image folders, and partitioning.

Every dataset yields ``(image, label)`` with the image as the victim model consumes it: a float
tensor (C, H, W) normalised with the dataset's :class:`semsim_audit.attacks.DataSpec` (``spec.denormalize``
maps it back to [0, 1] pixels). Every dataset carries that spec as ``.spec``.

Embedded sets (no files, deterministic):

- ``photos``: the colour photographs bundled with scikit-image; class = photograph, sample = a
  seeded random crop of random scale resized to 32x32. Train and test crops come from disjoint
  seeds, so the split is fixed.
- ``faces``: scikit-image's bundled LFW subset (100 faces, 100 non-faces, 25x25 grey), resized to
  32x32; classes ``face`` / ``non-face``; a fixed, stratified split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from skimage import data as skdata
from torch.utils.data import Dataset
from torchvision import transforms

from semsim_audit.core import DataSpec, resize

__all__ = [
    "DATASETS", "PHOTO_NAMES", "ImageDataset", "load_dataset", "photo_images",
    "partition_iid", "partition_dirichlet", "partition", "DatasetUnavailable",
]

# Photographs scikit-image ships inside its wheel (no pooch download needed); grey ones are
# replicated to three channels.
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble_deep_field",
    "retina", "immunohistochemistry", "camera", "coins",
)

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2860,), (0.3530,))
HALF_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class DatasetUnavailable(ValueError):
    """A dataset's files are missing and downloading was not asked for."""


class ImageDataset(Dataset):
    """Images held in memory as one tensor (N, C, H, W) in [0, 1], served normalised."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, spec: DataSpec,
                 classes: Sequence[str], name: str) -> None:
        if pixels.dim() != 4 or pixels.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}: pixels (N,C,H,W) and labels (N,) disagree: "
                             f"{tuple(pixels.shape)} vs {tuple(labels.shape)}")
        self.pixels = pixels.contiguous()
        self.labels = labels.long()
        self.spec = spec
        self.classes = list(classes)
        self.name = name
        self._normalised = spec.normalize(self.pixels)

    @property
    def targets(self) -> np.ndarray:
        return self.labels.numpy()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._normalised[index], int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageDataset(self.pixels[index], self.labels[index], self.spec, self.classes, self.name)


class _VisionDataset(Dataset):
    """A torchvision dataset served normalised with its spec (ToTensor + Normalize)."""

    def __init__(self, inner: Dataset, spec: DataSpec, classes: Sequence[str], name: str,
                 targets: Sequence[int]) -> None:
        self.inner = inner
        self.spec = spec
        self.classes = list(classes)
        self.name = name
        self._targets = np.asarray(targets, dtype=np.int64)

    @property
    def targets(self) -> np.ndarray:
        return self._targets

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.inner[index]
        return self.spec.normalize(image), int(label)


def photo_images(names: Sequence[str] = PHOTO_NAMES) -> list[torch.Tensor]:
    """The bundled scikit-image photographs as float (3, H, W) tensors in [0, 1]."""
    images = []
    for name in names:
        loader = skdata.stereo_motorcycle if name == "motorcycle" else getattr(skdata, name)
        array = np.asarray(loader()[0] if name == "motorcycle" else loader())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        array = array[..., :3]
        if array.dtype != np.uint8:  # some samples are float or bool
            array = (np.clip(array.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0)
    return images


def _random_crops(photo: torch.Tensor, count: int, rng: np.random.Generator, size: int,
                  scale: tuple[float, float]) -> torch.Tensor:
    _, height, width = photo.shape
    side_max = min(height, width)
    crops = []
    for _ in range(count):
        side = int(side_max * rng.uniform(*scale))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        crops.append(resize(crop, size))
    return torch.cat(crops)


def _photos(train: bool, samples_per_class: int | None = None, size: int = 32) -> ImageDataset:
    count = samples_per_class or (64 if train else 16)
    # Disjoint seeds per split and class: the split is fixed and the same on every machine.
    rng_base = 1000 if train else 2000
    pixels, labels = [], []
    for label, photo in enumerate(photo_images()):
        rng = np.random.default_rng(rng_base + label)
        pixels.append(_random_crops(photo, count, rng, size, scale=(0.25, 0.7)))
        labels.append(torch.full((count,), label, dtype=torch.long))
    spec = DataSpec(shape=(3, size, size), num_classes=len(PHOTO_NAMES), mean=HALF_STATS[0],
                    std=HALF_STATS[1])
    return ImageDataset(torch.cat(pixels), torch.cat(labels), spec, PHOTO_NAMES, "photos")


def _faces(train: bool, size: int = 32) -> ImageDataset:
    faces = torch.from_numpy(np.asarray(skdata.lfw_subset(), dtype=np.float32)).unsqueeze(1)
    faces = resize(faces, size)
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    order = np.random.default_rng(7).permutation(100)
    test_rank = order[:20]  # 20 faces + the matching 20 non-faces are the fixed test split
    is_test = np.zeros(200, dtype=bool)
    is_test[test_rank] = True
    is_test[test_rank + 100] = True
    keep = torch.from_numpy(is_test if not train else ~is_test)
    spec = DataSpec(shape=(1, size, size), num_classes=2, mean=(0.5,), std=(0.5,))
    return ImageDataset(faces[keep], labels[keep], spec, ("face", "non-face"), "faces")


def _torchvision(name: str, root: str | Path | None, train: bool, download: bool) -> Dataset:
    factories: dict[str, tuple[Callable[..., Dataset], tuple[tuple[float, ...], tuple[float, ...]], int]] = {
        "cifar10": (torchvision.datasets.CIFAR10, CIFAR10_STATS, 3),
        "cifar100": (torchvision.datasets.CIFAR100, CIFAR100_STATS, 3),
        "mnist": (torchvision.datasets.MNIST, MNIST_STATS, 1),
        "fashionmnist": (torchvision.datasets.FashionMNIST, FASHION_STATS, 1),
    }
    factory, (mean, std), channels = factories[name]
    root = Path(root) if root is not None else Path.home() / ".cache" / "semsim-audit" / "data"
    to_tensor = transforms.Compose([transforms.Resize(32), transforms.ToTensor()])
    try:
        inner = factory(root=str(root), train=train, download=download, transform=to_tensor)
    except RuntimeError as error:
        if download:
            raise DatasetUnavailable(f"{name}: download to {root} failed: {error}") from None
        raise DatasetUnavailable(
            f"{name}: files not found under {root}; pass download=True (CLI: --download) "
            f"or point root (--data-root) at a folder that has them") from None
    classes = list(getattr(inner, "classes", [str(i) for i in range(len(mean))]))
    spec = DataSpec(shape=(channels, 32, 32), num_classes=len(classes), mean=mean, std=std)
    return _VisionDataset(inner, spec, classes, name, list(inner.targets))


def _folder(root: str | Path | None, size: int = 32) -> Dataset:
    if root is None or not Path(root).is_dir():
        raise DatasetUnavailable(f"folder: no image folder at {root!s} (one sub-folder per class)")
    to_tensor = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        inner = torchvision.datasets.ImageFolder(str(root), transform=to_tensor)
    except (FileNotFoundError, RuntimeError) as error:
        raise DatasetUnavailable(f"folder: {root}: {error}") from None
    if len(inner.classes) < 2:
        raise DatasetUnavailable(f"folder: {root} needs at least two class sub-folders")
    spec = DataSpec(shape=(3, size, size), num_classes=len(inner.classes), mean=HALF_STATS[0],
                    std=HALF_STATS[1])
    return _VisionDataset(inner, spec, inner.classes, "folder", list(inner.targets))


DATASETS: tuple[str, ...] = ("photos", "faces", "cifar10", "cifar100", "mnist", "fashionmnist", "folder")


def load_dataset(name: str, *, train: bool = True, root: str | Path | None = None,
                 download: bool = False) -> Dataset:
    """Load a dataset by name (see ``DATASETS``); the result has ``.spec``, ``.targets``, ``.classes``.

    Raises ValueError for an unknown name and :class:`DatasetUnavailable` (a ValueError) when
    a dataset's files are missing, naming the path and the ``download`` flag.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key == "photos":
        return _photos(train)
    if key == "faces":
        return _faces(train)
    if key in ("cifar10", "cifar100", "mnist", "fashionmnist"):
        return _torchvision(key, root, train, download)
    if key == "folder":
        return _folder(root)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def partition_iid(num_items: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``range(num_items)`` into ``num_clients`` disjoint shards of near-equal size."""
    _check_partition_args(num_items, num_clients)
    order = np.random.default_rng(seed).permutation(num_items)
    return [np.sort(shard) for shard in np.array_split(order, num_clients)]


def partition_dirichlet(labels: Sequence[int] | np.ndarray, num_clients: int, alpha: float,
                        seed: int = 0, min_size: int = 1) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients by Dirichlet(alpha) proportions.

    Smaller ``alpha`` = stronger skew. Redraws (seeded) until every client has ``min_size`` items.
    """
    labels = np.asarray(labels)
    _check_partition_args(len(labels), num_clients)
    if not alpha > 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    if num_clients * min_size > len(labels):
        raise ValueError(f"cannot give {num_clients} clients {min_size} items each from {len(labels)}")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, piece in enumerate(np.split(members, cuts)):
                shards[client].extend(piece.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"Dirichlet(alpha={alpha}) left a client with fewer than {min_size} items "
                     f"after 1000 draws; raise alpha or lower the client count")


def partition(dataset: Dataset, num_clients: int, scheme: str = "iid", alpha: float = 0.5,
              seed: int = 0) -> list[np.ndarray]:
    """Index shards of ``dataset`` for ``num_clients`` clients: ``iid`` or ``dirichlet``."""
    if scheme == "iid":
        return partition_iid(len(dataset), num_clients, seed)
    if scheme == "dirichlet":
        return partition_dirichlet(dataset.targets, num_clients, alpha, seed)  # type: ignore[attr-defined]
    raise ValueError(f"unknown partition scheme {scheme!r}; use 'iid' or 'dirichlet'")


def _check_partition_args(num_items: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_items < num_clients:
        raise ValueError(f"cannot split {num_items} items among {num_clients} clients")
