"""Datasets read from files: torchvision's on-disk formats and a user's class folder, and their errors."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import write_cifar10, write_cifar100, write_class_folder, write_mnist
from PIL import Image

from semsim_audit.core import resize
from semsim_audit.data import DATA_ROOT_ENV, DatasetUnavailable, load_dataset


def _pixels(dataset, index: int) -> torch.Tensor:
    image, _ = dataset[index]
    return dataset.spec.denormalize(image)


@pytest.mark.parametrize("train", [True, False])
def test_cifar10_batches_load_as_written(tmp_path: Path, train: bool) -> None:
    written = write_cifar10(tmp_path)["train" if train else "test"]
    dataset = load_dataset("cifar10", root=tmp_path, train=train)
    assert len(dataset) == len(written[1]) and dataset.classes[3] == "cat"
    assert dataset.spec.shape == (3, 32, 32) and dataset.spec.num_classes == 10
    assert dataset.targets.tolist() == written[1].tolist()
    for index in range(len(dataset)):
        expected = torch.from_numpy(written[0][index]).float() / 255
        assert torch.allclose(_pixels(dataset, index), expected, atol=1e-5)
        assert dataset[index][1] == int(written[1][index])


def test_cifar100_uses_the_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    dataset = load_dataset("cifar100", root=tmp_path, train=False)
    assert dataset.spec.num_classes == 100 and dataset.classes[7] == "class_7"
    assert dataset.targets.tolist() == written["test"][1].tolist()
    expected = torch.from_numpy(written["test"][0][1]).float() / 255
    assert torch.allclose(_pixels(dataset, 1), expected, atol=1e-5)


@pytest.mark.parametrize(("name", "folder", "compressed"), [
    ("mnist", "MNIST", False), ("fashionmnist", "FashionMNIST", False), ("mnist", "MNIST", True)])
def test_mnist_idx_files_load_resized_to_32(tmp_path: Path, name: str, folder: str, compressed: bool) -> None:
    written = write_mnist(tmp_path, folder, compressed=compressed)
    dataset = load_dataset(name, root=tmp_path, train=True)
    assert len(dataset) == 4 and dataset.spec.shape == (1, 32, 32) and dataset.spec.num_classes == 10
    assert dataset.targets.tolist() == written["train"][1].tolist()
    expected = resize(torch.from_numpy(written["train"][0][2]).float() / 255, 32)
    assert torch.allclose(_pixels(dataset, 2), expected, atol=1e-5)
    assert len(load_dataset(name, root=tmp_path, train=False)) == 2
    assert ("Sneaker" in dataset.classes) == (name == "fashionmnist")


def test_subset_keeps_only_the_shard(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dataset = load_dataset("cifar10", root=tmp_path)
    shard = dataset.subset([7, 2])
    assert len(shard) == 2 and shard.images.shape[0] == 2
    assert torch.equal(shard[0][0], dataset[7][0])
    assert shard.targets.tolist() == dataset.targets[[7, 2]].tolist()


def test_download_with_the_files_present_uses_them(tmp_path: Path) -> None:
    # The tiny files fail torchvision's checksums: a download would replace them with 50,000 images.
    write_cifar10(tmp_path)
    assert len(load_dataset("cifar10", root=tmp_path, download=True)) == 10


def test_the_data_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path)
    write_class_folder(tmp_path / "mine")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert len(load_dataset("mnist")) == 4
    assert len(load_dataset("folder", root=tmp_path / "mine")) == 6  # an explicit root wins


def test_a_missing_batch_is_named_with_what_to_do(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetUnavailable) as error:
        load_dataset("cifar10", root=tmp_path)
    message = str(error.value)
    assert "cifar-10-batches-py/data_batch_3 is missing" in message and "--download" in message
    assert "\n" not in message


def test_a_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({"data": Payload()}))
    with pytest.raises(DatasetUnavailable, match=r"data_batch_2 is not a CIFAR python batch \(refers to "):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_a_cifar_batch_with_wrong_arrays_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DatasetUnavailable, match=r"test_batch: 'data' is not a uint8 array of shape"):
        load_dataset("cifar10", root=tmp_path, train=False)
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    with pytest.raises(DatasetUnavailable, match=r"'labels' is not one label in \[0, 10\) per image"):
        load_dataset("cifar10", root=tmp_path, train=False)


def test_truncated_and_foreign_idx_files_are_named(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DatasetUnavailable, match="train-images-idx3-ubyte is truncated or too long"):
        load_dataset("mnist", root=tmp_path)
    images.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(DatasetUnavailable, match="is not an idx file of 3-d uint8 data"):
        load_dataset("mnist", root=tmp_path)
    images.unlink()
    (images.parent / (images.name + ".gz")).write_bytes(gzip.compress(b"x")[:5])
    with pytest.raises(DatasetUnavailable, match="not a gzip file"):
        load_dataset("mnist", root=tmp_path)


def test_class_folder_images_are_rgb_32_with_their_class(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "mine", classes=("cats", "dogs", "owls"), per_class=2)
    dataset = load_dataset("folder", root=root)
    assert dataset.classes == ["cats", "dogs", "owls"] and dataset.spec.num_classes == 3
    assert len(dataset) == 6 and dataset.targets.tolist() == [0, 0, 1, 1, 2, 2]
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == (3, 32, 32) and label == index // 2
    grey = np.asarray(Image.open(root / "cats" / "0.png"))
    assert grey.ndim == 2  # the writer's grey image comes out with three equal channels
    first = _pixels(dataset, 0)
    assert torch.allclose(first[0], first[1]) and torch.allclose(first[1], first[2])


def test_class_folder_ignores_hidden_entries_and_other_files(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "mine")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "cats" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "cats" / "notes.txt").write_text("not an image")
    dataset = load_dataset("folder", root=root)
    assert dataset.classes == ["cats", "dogs"] and len(dataset) == 6


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: None, "mine does not exist"),
    (lambda root: root.write_text("x"), "mine is not a folder"),
    (lambda root: (root.mkdir(), (root / "a.png").write_bytes(b"")), "has no class sub-folders"),
    (lambda root: (write_class_folder(root), (root / "empty").mkdir()), "no images in "),
    (lambda root: write_class_folder(root, classes=("only",)), "has one class sub-folder (only)"),
    (lambda root: (write_class_folder(root), (root / "dogs" / "9.png").write_bytes(b"not a png")),
     "cannot read image "),
])
def test_malformed_class_folders_fail_with_one_line(tmp_path: Path, make, message: str) -> None:
    root = tmp_path / "mine"
    make(root)
    with pytest.raises(DatasetUnavailable) as error:
        load_dataset("folder", root=root)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_image_is_named(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "mine")
    image = root / "dogs" / "2.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DatasetUnavailable, match=f"cannot read image {image}"):
        load_dataset("folder", root=root)


def test_folder_without_a_root_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(DatasetUnavailable, match="no image folder given.*--data-root"):
        load_dataset("folder")
