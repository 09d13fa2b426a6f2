"""Tiny datasets in the on-disk formats torchvision downloads, and a user's class folder of PNGs.

Each writer returns what it wrote (pixels as uint8 (N, C, H, W), labels), so tests can check that
loading gives back exactly those images.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_pickle(path: Path, entry: dict) -> None:
    # CIFAR's files were pickled by Python 2 with numpy < 2: protocol 2, arrays rebuilt by
    # numpy.core.multiarray._reconstruct. Written the same way, module name included.
    raw = pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


def _cifar_batch(rng: np.random.Generator, count: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, classes, size=count)
    return pixels, labels


def write_cifar10(root: Path, per_batch: int = 2, test: int = 3, seed: int = 0) -> dict[str, tuple]:
    """``root/cifar-10-batches-py``: data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_pixels, train_labels = [], []
    for number in range(1, 6):
        pixels, labels = _cifar_batch(rng, per_batch, 10)
        _cifar_pickle(folder / f"data_batch_{number}", {
            "batch_label": f"training batch {number} of 5", "labels": labels.tolist(),
            "data": pixels.reshape(per_batch, -1), "filenames": [f"img_{i}.png" for i in range(per_batch)]})
        train_pixels.append(pixels)
        train_labels.append(labels)
    pixels, labels = _cifar_batch(rng, test, 10)
    _cifar_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(),
                                          "data": pixels.reshape(test, -1)})
    _cifar_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch,
                                            "num_vis": 3072})
    return {"train": (np.concatenate(train_pixels), np.concatenate(train_labels)), "test": (pixels, labels)}


def write_cifar100(root: Path, train: int = 4, test: int = 2, seed: int = 1) -> dict[str, tuple]:
    """``root/cifar-100-python``: train, test (fine and coarse labels), meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", train), ("test", test)):
        pixels, labels = _cifar_batch(rng, count, 100)
        _cifar_pickle(folder / split, {"filenames": [f"{split}_{i}.png" for i in range(count)],
                                       "batch_label": split, "fine_labels": labels.tolist(),
                                       "coarse_labels": (labels // 5).tolist(),
                                       "data": pixels.reshape(count, -1)})
        written[split] = (pixels, labels)
    _cifar_pickle(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)],
                                    "coarse_label_names": [f"super_{i}" for i in range(20)]})
    return written


def _idx(data: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, data.ndim]) + struct.pack(f">{data.ndim}I", *data.shape) + data.tobytes()


def write_mnist(root: Path, folder: str = "MNIST", train: int = 4, test: int = 2, compressed: bool = False,
                seed: int = 2) -> dict[str, tuple]:
    """``root/<folder>/raw``: train-/t10k- images-idx3-ubyte and labels-idx1-ubyte (or their .gz)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        pixels = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        for name, data in ((f"{prefix}-images-idx3-ubyte", pixels), (f"{prefix}-labels-idx1-ubyte", labels)):
            if compressed:
                (raw / f"{name}.gz").write_bytes(gzip.compress(_idx(data)))
            else:
                (raw / name).write_bytes(_idx(data))
        written[split] = (pixels[:, None], labels)
    return written


def write_class_folder(root: Path, classes: tuple[str, ...] = ("cats", "dogs"), per_class: int = 3,
                       seed: int = 3) -> Path:
    """``root/<class>/<i>.png``: colour PNGs of assorted sizes, one grey; returns ``root``."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            height, width = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            shape = (height, width) if index == 0 else (height, width, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{index}.png")
    return root
