"""The packaged checkpoint: proxy-trained, small, calibrated, and right about what attacks really produce."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semsim_audit import SemSim, metrics
from semsim_audit.attacks import AttackConfig, DataSpec, Observation, run_attack
from semsim_audit.data import load_dataset
from semsim_audit.models import model_for
from semsim_audit.semsim import DEFAULT_CHECKPOINT
from semsim_audit.semsim.simulated import split_originals

PHOTOS = DataSpec(shape=(3, 32, 32), num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
CIFAR = DataSpec(shape=(3, 32, 32), num_classes=10, mean=(0.4914, 0.4822, 0.4465),
                 std=(0.2470, 0.2435, 0.2616))
# A held-out crop iDLG reconstructs at 64 dB in 100 L-BFGS iterations (about 2,000 evaluations, 20 s of
# one CPU core), on the LeNet seeded as in benchmarks/semsim_attack_outputs.py.
CONVERGING_INDEX, CONVERGING_ITERATIONS = 2, 100


def _shifted_with_mild_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """2 px to the right (edge pixels repeated), brightness +-5 %, per-channel gain +-5 %."""
    padded = F.pad(images, (2, 2, 0, 0), mode="replicate")
    shifted = padded[..., :, :-4]
    count = images.shape[0]
    gain = 1 + 0.1 * (torch.rand(count, 3, 1, 1, generator=generator) - 0.5)
    brightness = 0.1 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
    return (shifted * gain + brightness).clamp(0, 1)


def _held_out() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The photos test split (crops the checkpoint never saw), their shifted copies, their labels."""
    photos = load_dataset("photos", train=False)
    generator = torch.Generator().manual_seed(0)
    return photos.pixels, _shifted_with_mild_jitter(photos.pixels, generator), photos.labels


def _observation(image: torch.Tensor, label: int, spec: DataSpec, seed: int) -> Observation:
    """A FedSGD client of DLG's uniform-init sigmoid LeNet that trained on one image."""
    torch.manual_seed(seed)
    model = model_for("lenet", spec, uniform_init=True)
    loss = nn.functional.cross_entropy(model(spec.normalize(image.unsqueeze(0))), torch.tensor([label]))
    return Observation.from_gradients(model, torch.autograd.grad(loss, list(model.parameters())), spec)


def test_default_checkpoint_is_proxy_small_calibrated_and_documented() -> None:
    sem = SemSim.load()
    assert DEFAULT_CHECKPOINT.stat().st_size <= 25 * 1024 * 1024
    assert sem.info["annotator"] == "proxy" and sem.info["default"] is True
    assert "proxy annotations" in sem.info["data"] and "real attack outputs" in sem.info["data"]
    assert sem.metadata.head == "stats-early"
    low, high = sem.borderline_band  # type: ignore[misc]
    assert low <= sem.threshold <= high
    assert "validation identities" in sem.calibration["set"] and sem.calibration["balanced_accuracy"] >= 0.8


def test_shifted_copy_is_closer_than_another_photos_crop() -> None:
    sem = SemSim.load()
    originals, shifted, labels = _held_out()
    generator = torch.Generator().manual_seed(1)
    other = torch.empty_like(labels)
    for i, label in enumerate(labels.tolist()):
        candidates = torch.nonzero(labels != label).flatten()
        other[i] = candidates[torch.randint(len(candidates), (1,), generator=generator)]
    closer = sem.distance(originals, shifted) < sem.distance(originals, originals[other])
    assert closer.float().mean() >= 0.9


def test_attack_initialisations_are_not_recognizable() -> None:
    # An attack's first candidate (one step of 1e-9 from its seeded random start), under two
    # normalisations: noise that learnt nothing must never count as a leak.
    sem = SemSim.load(device="cpu")
    originals, photos = split_originals(8, "heldout", seed=11)
    starts, paired = [], []
    for number in range(48):
        spec = (PHOTOS, CIFAR)[number % 2]
        index = number % originals.shape[0]
        observation = _observation(originals[index], photos[index], spec, seed=number)
        result = run_attack("inverting-gradients", observation,
                            AttackConfig(iterations=1, lr=1e-9, seed=1000 + number, device="cpu"))
        starts.append(result.images)
        paired.append(originals[index])
    starts, paired = torch.cat(starts), torch.stack(paired)
    assert float(metrics.psnr(paired, starts).max()) < 12  # noise, by measurement
    assert not bool(sem.recognizable(paired, starts).any())


@pytest.mark.slow
def test_a_converged_reconstruction_and_its_flip_are_recognizable_and_not_as_another_photo() -> None:
    # iDLG on DLG's LeNet converges on single images; this crop of the held-out band converges (the
    # PSNR check says so, whatever the engine's iteration count means).
    sem = SemSim.load(device="cpu")
    originals, photos = split_originals(12, "heldout", seed=2070)
    index = CONVERGING_INDEX
    observation = _observation(originals[index], photos[index], PHOTOS, seed=1000 * index + 7)
    result = run_attack("idlg", observation,
                        AttackConfig(iterations=CONVERGING_ITERATIONS, seed=0, device="cpu"))
    original = originals[index:index + 1]
    assert float(metrics.psnr(original, result.images)) >= 35, "the attack did not converge on this image"
    for reconstruction in (result.images, result.images.flip(-1)):
        assert bool(sem.recognizable(original, reconstruction).all())
    other = next(k for k in range(originals.shape[0]) if photos[k] != photos[index])
    assert not bool(sem.recognizable(originals[other:other + 1], result.images).any())
