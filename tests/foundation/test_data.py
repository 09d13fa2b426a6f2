import numpy as np
import pytest
import torch
from PIL import Image

from semsim_audit.data import (
    PHOTO_NAMES,
    DatasetUnavailable,
    load_dataset,
    partition,
    partition_dirichlet,
    partition_iid,
)


def test_photos_are_real_deterministic_and_carry_a_spec():
    first = load_dataset("photos")
    second = load_dataset("photos")
    assert len(PHOTO_NAMES) >= 8
    assert first.spec.shape == (3, 32, 32) and first.spec.num_classes == len(PHOTO_NAMES)
    assert torch.equal(first.pixels, second.pixels)
    assert torch.equal(first.labels, second.labels)
    assert set(first.targets.tolist()) == set(range(len(PHOTO_NAMES)))
    assert 0.0 <= float(first.pixels.min()) and float(first.pixels.max()) <= 1.0
    # Real photographs, not flat colour: every crop has texture.
    assert float(first.pixels.flatten(1).std(dim=1).min()) > 0.01


def test_photo_items_are_normalised_model_inputs():
    dataset = load_dataset("photos", train=False)
    image, label = dataset[3]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert torch.allclose(dataset.spec.denormalize(image), dataset.pixels[3], atol=1e-6)


def test_photo_train_and_test_splits_do_not_share_crops():
    train = load_dataset("photos", train=True).pixels.flatten(1)
    test = load_dataset("photos", train=False).pixels.flatten(1)
    distances = torch.cdist(test, train)
    assert float(distances.min()) > 1e-3


def test_faces_split_is_fixed_stratified_and_disjoint():
    train = load_dataset("faces", train=True)
    test = load_dataset("faces", train=False)
    assert train.spec.shape == (1, 32, 32) and train.classes == ["face", "non-face"]
    assert len(train) == 160 and len(test) == 40
    assert np.bincount(test.targets).tolist() == [20, 20]
    assert float(torch.cdist(test.pixels.flatten(1), train.pixels.flatten(1)).min()) > 1e-4
    assert torch.equal(test.pixels, load_dataset("faces", train=False).pixels)


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*photos"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashionmnist"])
def test_missing_torchvision_files_name_the_path_and_the_flag(tmp_path, name):
    with pytest.raises(DatasetUnavailable) as error:
        load_dataset(name, root=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "download=True" in message
    assert "\n" not in message


def test_image_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            array = rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
            Image.fromarray(array).save(tmp_path / cls / f"{i}.png")
    dataset = load_dataset("folder", root=tmp_path)
    assert len(dataset) == 6 and dataset.classes == ["cats", "dogs"]
    image, label = dataset[5]
    assert image.shape == (3, 32, 32) and label == 1
    assert dataset.spec.num_classes == 2


def test_image_folder_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailable, match="nope does not exist"):
        load_dataset("folder", root=tmp_path / "nope")


def _assert_disjoint_cover(shards, total):
    joined = np.concatenate(shards)
    assert len(joined) == total
    assert len(np.unique(joined)) == total


def test_iid_partition_is_disjoint_covering_and_seeded():
    shards = partition_iid(103, 4, seed=1)
    _assert_disjoint_cover(shards, 103)
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(shards, partition_iid(103, 4, seed=1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(shards, partition_iid(103, 4, seed=2), strict=True))


def test_dirichlet_partition_is_disjoint_covering_and_skewed():
    dataset = load_dataset("photos")
    shards = partition(dataset, 5, "dirichlet", alpha=0.1, seed=3)
    _assert_disjoint_cover(shards, len(dataset))
    again = partition(dataset, 5, "dirichlet", alpha=0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))
    labels = dataset.targets
    # Strong skew: each client is dominated by few classes, unlike the uniform label mix.
    dominant = [np.bincount(labels[s], minlength=10).max() / len(s) for s in shards]
    assert np.mean(dominant) > 0.3
    iid = partition(dataset, 5, "iid", seed=3)
    assert np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in iid]) < 0.2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: partition_iid(3, 5), "cannot split 3 items among 5 clients"),
        (lambda: partition_iid(10, 0), "num_clients must be >= 1"),
        (lambda: partition_dirichlet([0, 1, 0, 1], 2, alpha=0.0), "alpha must be > 0"),
        (lambda: partition(load_dataset("faces"), 2, "pathological"), "unknown partition scheme"),
    ],
)
def test_bad_partition_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
