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

Files on disk (``root``, else ``$SEMSIM_AUDIT_DATA_ROOT``, else ``~/.cache/semsim-audit/data``):

- ``cifar10``, ``cifar100``, ``mnist``, ``fashionmnist``: torchvision's on-disk layout, read here
  (CIFAR's pickles through an unpickler that builds arrays only; MNIST's idx files, plain or .gz);
  torchvision fetches them only when ``download=True`` and they are missing.
- ``folder``: ``root`` holds one sub-folder of images per class (torchvision's ``ImageFolder``), every
  image resized to 32x32 RGB; train and test are the same images (a folder has no split).
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from skimage import data as skdata
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from semsim_audit.core import DataSpec, resize

__all__ = [
    "DATASETS", "TORCHVISION_DATASETS", "PARTITIONS", "PHOTO_NAMES", "DATA_ROOT_ENV", "DEFAULT_DATA_ROOT",
    "ImageDataset", "load_dataset", "data_root", "photo_images", "partition_iid", "partition_dirichlet",
    "partition", "DatasetUnavailable",
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


DATA_ROOT_ENV = "SEMSIM_AUDIT_DATA_ROOT"
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "semsim-audit" / "data"


class DatasetUnavailable(ValueError):
    """A dataset cannot be loaded: files missing (and no download asked for), malformed or unreadable."""


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


class _ArrayDataset(Dataset):
    """uint8 images (N, C, H, W) held in memory, served resized to the spec's side and normalised.

    Kept as uint8 and converted per item: CIFAR-10 as floats would take 600 MB, twice with its
    normalised copy (what :class:`ImageDataset` holds).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: DataSpec, classes: Sequence[str],
                 name: str) -> None:
        self.images = images
        self.labels = labels.astype(np.int64)
        self.spec = spec
        self.classes = list(classes)
        self.name = name

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).float() / 255.0
        side = self.spec.shape[1]
        if image.shape[-2:] != (side, side):
            image = resize(image, side)
        return self.spec.normalize(image), int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> _ArrayDataset:
        """The items at ``indices`` alone (what a client keeps, instead of the whole set)."""
        index = np.asarray(indices, dtype=np.int64)
        return _ArrayDataset(self.images[index], self.labels[index], self.spec, self.classes, self.name)


def _class_folders(directory: str | Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory)
                  if entry.is_dir() and not entry.name.startswith("."))


class _ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder, blind to hidden entries (``.ipynb_checkpoints``, macOS ``._x.png``)."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = _class_folders(directory)
        return classes, {name: index for index, name in enumerate(classes)}


def _is_image_file(path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


class _FolderDataset(Dataset):
    """A user's class folder, each image served as the victim consumes it (32x32 RGB, normalised)."""

    def __init__(self, inner: _ImageFolder, spec: DataSpec) -> None:
        self.inner = inner
        self.spec = spec
        self.classes = list(inner.classes)
        self.name = "folder"
        self._targets = np.asarray(inner.targets, dtype=np.int64)

    @property
    def targets(self) -> np.ndarray:
        return self._targets

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image, label = self.inner[index]
        except OSError as error:  # changed on disk since it was checked at load
            raise DatasetUnavailable(_unreadable(self.inner.samples[index][0], error)) from None
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


def data_root(root: str | Path | None = None) -> Path | None:
    """Where dataset files are: ``root``, else ``$SEMSIM_AUDIT_DATA_ROOT``, else None (caller's default)."""
    if root is not None:
        return Path(root).expanduser()
    from_env = os.environ.get(DATA_ROOT_ENV)
    return Path(from_env).expanduser() if from_env else None


class _FilesMissing(Exception):
    """A file of a dataset's on-disk layout is not there (downloading may fix it)."""


# CIFAR's python batches are pickles; this unpickler builds the arrays, lists and dicts they hold
# and refuses any other global, so a crafted file cannot run code.
_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
})


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        old_numpy = module.startswith("numpy.core")  # pickled by numpy < 2 (CIFAR's own files)
        canonical = "numpy._core" + module.removeprefix("numpy.core") if old_numpy else module
        if (canonical, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a dataset file never needs")
        try:
            return getattr(importlib.import_module(canonical), name)
        except (ImportError, AttributeError):  # numpy < 2 has no numpy._core
            return super().find_class(module, name)


# name: (folder, train files, test files, label key, meta file, class-names key)
_CIFAR: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str, str, str]] = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names"),
}


def _unpickle(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise _FilesMissing(f"{path.parent.name}/{path.name} is missing")
    try:
        with path.open("rb") as handle:
            entry = _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError) as error:
        reason = str(error) or type(error).__name__
        raise DatasetUnavailable(f"{name}: {path} is not a CIFAR python batch ({reason})") from None
    if not isinstance(entry, dict):
        raise DatasetUnavailable(f"{name}: {path} is not a CIFAR python batch (holds {type(entry).__name__})")
    return entry


def _read_cifar(name: str, root: Path, train: bool) -> _ArrayDataset:
    folder, train_files, test_files, label_key, meta_file, names_key = _CIFAR[name]
    meta = _unpickle(root / folder / meta_file, name)
    classes = meta.get(names_key)
    if not isinstance(classes, list) or len(classes) < 2:
        raise DatasetUnavailable(f"{name}: {root / folder / meta_file} has no class names ({names_key!r})")
    images, labels = [], []
    for file in train_files if train else test_files:
        path = root / folder / file
        batch = _unpickle(path, name)
        pixels, targets = batch.get("data"), batch.get(label_key)
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
                or pixels.shape[1] != 3 * 32 * 32:
            raise DatasetUnavailable(f"{name}: {path}: 'data' is not a uint8 array of shape (N, 3072)")
        targets = np.asarray(targets if targets is not None else [], dtype=np.int64)
        if targets.shape != (pixels.shape[0],) or (targets.size and not 0 <= targets.min() <= targets.max()
                                                    < len(classes)):
            raise DatasetUnavailable(f"{name}: {path}: {label_key!r} is not one label in "
                                     f"[0, {len(classes)}) per image")
        images.append(pixels.reshape(-1, 3, 32, 32))
        labels.append(targets)
    spec_stats = CIFAR10_STATS if name == "cifar10" else CIFAR100_STATS
    spec = DataSpec(shape=(3, 32, 32), num_classes=len(classes), mean=spec_stats[0], std=spec_stats[1])
    return _ArrayDataset(np.concatenate(images), np.concatenate(labels), spec, [str(c) for c in classes],
                         name)


_MNIST: dict[str, tuple[str, Any, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "mnist": ("MNIST", torchvision.datasets.MNIST, MNIST_STATS),
    "fashionmnist": ("FashionMNIST", torchvision.datasets.FashionMNIST, FASHION_STATS),
}


def _read_idx(path: Path, name: str, ndim: int) -> np.ndarray:
    """One idx file (LeCun's format: magic 0x0000_08_ndim, big-endian sizes, uint8 data), plain or .gz."""
    packed = path.with_name(path.name + ".gz")
    if path.is_file():
        raw = path.read_bytes()
    elif packed.is_file():
        try:
            raw = gzip.decompress(packed.read_bytes())
        except (OSError, EOFError) as error:
            raise DatasetUnavailable(f"{name}: {packed}: not a gzip file ({error})") from None
        path = packed
    else:
        raise _FilesMissing(f"{path.parent.parent.name}/raw/{path.name} is missing")
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DatasetUnavailable(f"{name}: {path} is not an idx file of {ndim}-d uint8 data")
    sizes = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(sizes)):
        raise DatasetUnavailable(f"{name}: {path} is truncated or too long: its header says {sizes}, "
                                 f"it holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(sizes).copy()


def _read_mnist(name: str, root: Path, train: bool) -> _ArrayDataset:
    folder, factory, (mean, std) = _MNIST[name]
    prefix = "train" if train else "t10k"
    raw = root / folder / "raw"
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", name, 3)
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", name, 1)
    classes = list(factory.classes)
    if labels.shape[0] != images.shape[0] or (labels.size and labels.max() >= len(classes)):
        raise DatasetUnavailable(f"{name}: {raw}: {labels.shape[0]} labels in [0, {len(classes)}) expected "
                                 f"for {images.shape[0]} images")
    spec = DataSpec(shape=(1, 32, 32), num_classes=len(classes), mean=mean, std=std)
    return _ArrayDataset(images[:, None], labels, spec, classes, name)


def _download(name: str, root: Path) -> None:
    factory = _MNIST[name][1] if name in _MNIST else {
        "cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:  # torchvision fetches both splits and checks their checksums
        factory(root=str(root), train=True, download=True)
    except Exception as error:  # urllib, tarfile and torchvision raise many kinds
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DatasetUnavailable(f"{name}: download to {root} failed: {reason}") from None


def _torchvision(name: str, root: str | Path | None, train: bool, download: bool) -> Dataset:
    folder = data_root(root) or DEFAULT_DATA_ROOT
    read = _read_cifar if name in _CIFAR else _read_mnist
    try:
        return read(name, folder, train)
    except _FilesMissing as missing:
        if not download:
            raise DatasetUnavailable(
                f"{name}: files not found under {folder} ({missing}); pass download=True (CLI: --download) "
                f"or point root (CLI: --data-root) at a folder that has them") from None
    _download(name, folder)
    try:
        return read(name, folder, train)
    except _FilesMissing as missing:
        raise DatasetUnavailable(f"{name}: {missing} under {folder} even after downloading") from None


def _unreadable(path: str, error: Exception) -> str:
    reason = "not an image file" if isinstance(error, UnidentifiedImageError) else str(error)
    return f"folder: cannot read image {path}: {reason}"


def _folder(root: str | Path | None, size: int = 32) -> Dataset:
    folder = data_root(root)
    if folder is None:
        raise DatasetUnavailable("folder: no image folder given; pass root (CLI: --data-root DIR), "
                                 "a folder with one sub-folder of images per class")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetUnavailable(f"folder: {folder} {what} (expected one sub-folder of images per class)")
    to_tensor = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        if not _class_folders(folder):
            raise DatasetUnavailable(f"folder: {folder} has no class sub-folders; put each class's images "
                                     f"in {folder / '<class>'}/")
        inner = _ImageFolder(str(folder), transform=to_tensor, is_valid_file=_is_image_file,
                             allow_empty=True)
    except OSError as error:
        raise DatasetUnavailable(f"folder: cannot read {folder}: {error.strerror or error}") from None
    counts = np.bincount(np.asarray(inner.targets, dtype=np.int64), minlength=len(inner.classes))
    empty = [name for name, count in zip(inner.classes, counts, strict=True) if count == 0]
    if empty:
        raise DatasetUnavailable(f"folder: no images in {', '.join(str(folder / name) for name in empty)} "
                                 f"(image files end in {', '.join(IMG_EXTENSIONS)})")
    if len(inner.classes) < 2:
        raise DatasetUnavailable(f"folder: {folder} has one class sub-folder ({inner.classes[0]}); "
                                 "a classifier needs at least two")
    for path, _ in inner.samples:  # a broken file fails here, with its name, not inside a client
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DatasetUnavailable(_unreadable(path, error)) from None
    spec = DataSpec(shape=(3, size, size), num_classes=len(inner.classes), mean=HALF_STATS[0],
                    std=HALF_STATS[1])
    return _FolderDataset(inner, spec)


DATASETS: tuple[str, ...] = ("photos", "faces", "cifar10", "cifar100", "mnist", "fashionmnist", "folder")
TORCHVISION_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashionmnist")
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet")


def load_dataset(name: str, *, train: bool = True, root: str | Path | None = None,
                 download: bool = False) -> Dataset:
    """Load a dataset by name (see ``DATASETS``); the result has ``.spec``, ``.targets``, ``.classes``.

    Parameters
    ----------
    root
        Where the files are: torchvision's layout for the torchvision sets, the class folders for
        ``folder``. Default: ``$SEMSIM_AUDIT_DATA_ROOT``, else ``~/.cache/semsim-audit/data``
        (``folder`` needs one of the first two). The embedded sets ignore it.
    download
        Fetch a torchvision set with torchvision when its files are missing (needs internet).

    Raises ValueError for an unknown name and :class:`DatasetUnavailable` (a ValueError) when a
    dataset's files are missing, malformed or unreadable, naming the file and what to do.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key == "photos":
        return _photos(train)
    if key == "faces":
        return _faces(train)
    if key in TORCHVISION_DATASETS:
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
    raise ValueError(f"unknown partition scheme {scheme!r}; use one of {', '.join(PARTITIONS)}")


def _check_partition_args(num_items: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_items < num_clients:
        raise ValueError(f"cannot split {num_items} items among {num_clients} clients")
