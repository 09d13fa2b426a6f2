"""The packaged checkpoint: proxy-trained, small, and closer for a shifted copy than for another photo."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semsim_audit import SemSim
from semsim_audit.data import load_dataset
from semsim_audit.semsim import DEFAULT_CHECKPOINT


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


def test_default_checkpoint_is_proxy_small_and_documented() -> None:
    sem = SemSim.load()
    assert DEFAULT_CHECKPOINT.stat().st_size <= 25 * 1024 * 1024
    assert sem.info["annotator"] == "proxy" and sem.info["default"] is True
    assert "proxy annotations" in sem.info["data"]
    assert 0 < sem.threshold < 2


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
