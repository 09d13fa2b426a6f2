import pytest
import torch

from semsim_audit.core import DataSpec, denormalize, normalize, seed_everything, select_device


def test_auto_device_follows_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device(None).type == expected
    assert select_device("cpu") == torch.device("cpu")


def test_bad_device_names_are_refused():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        select_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_is_refused_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")


@pytest.mark.gpu
def test_auto_picks_cuda_on_a_gpu_machine():
    assert select_device("auto").type == "cuda"


def test_seeding_repeats_torch_and_numpy():
    import numpy as np

    seed_everything(5)
    first = (torch.rand(3), np.random.rand(3))
    generator = seed_everything(5)
    second = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all()
    assert torch.equal(torch.rand(2, generator=generator), torch.rand(2, generator=seed_everything(5)))


def test_normalise_round_trip_batched_and_single():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    images = torch.rand(4, 3, 8, 8)
    assert torch.allclose(denormalize(normalize(images, mean, std), mean, std), images, atol=1e-6)
    single = normalize(images[0], mean, std)
    assert torch.allclose(single, normalize(images, mean, std)[0])
    assert torch.allclose(single[2], (images[0, 2] - 0.3) / 2.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (3, 32), "num_classes": 10, "mean": (0,) * 3, "std": (1,) * 3}, "shape"),
        ({"shape": (3, 32, 32), "num_classes": 1, "mean": (0,) * 3, "std": (1,) * 3}, "num_classes"),
        ({"shape": (3, 32, 32), "num_classes": 10, "mean": (0,), "std": (1,) * 3}, "one value per channel"),
        ({"shape": (3, 32, 32), "num_classes": 10, "mean": (0,) * 3, "std": (1, 0, 1)},
         "std must be positive"),
    ],
)
def test_data_spec_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataSpec(**kwargs)


def test_data_spec_round_trips_through_a_dict():
    spec = DataSpec(shape=(1, 28, 28), num_classes=10, mean=(0.13,), std=(0.31,))
    assert DataSpec.from_dict(spec.to_dict()) == spec
