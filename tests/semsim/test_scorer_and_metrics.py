"""The SemSim scorer's contract and the classic per-pair metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from semsim_audit import SemSim
from semsim_audit.metrics import identifiability, lpips, match, mse, psnr, ssim


def test_distance_contract(random_checkpoint: Path) -> None:
    sem = SemSim.load(random_checkpoint, device="cpu", batch_size=3)
    originals = torch.rand(7, 3, 32, 32)
    others = torch.rand(7, 3, 32, 32)
    same = sem.distance(originals, originals)
    different = sem.distance(originals, others)
    assert same.shape == (7,) and same.dtype == torch.float32
    assert torch.allclose(same, torch.zeros(7), atol=1e-5)
    assert (different >= 0).all() and (different <= 2 + 1e-5).all()  # unit embeddings
    flags = sem.recognizable(originals, originals)
    assert flags.dtype == torch.bool and flags.all()
    assert not sem.recognizable(originals, others, threshold=0.0).any()


def test_any_size_and_grey_inputs_are_accepted(random_checkpoint: Path) -> None:
    sem = SemSim.load(random_checkpoint, device="cpu")
    colour = torch.rand(2, 1, 48, 48).expand(-1, 3, -1, -1)
    grey = colour[:, :1]
    assert torch.allclose(sem.distance(colour, grey), torch.zeros(2), atol=1e-5)
    assert sem.distance(torch.rand(2, 3, 224, 160), torch.rand(2, 1, 28, 28)).shape == (2,)


def test_bad_inputs_raise_value_errors(random_checkpoint: Path) -> None:
    sem = SemSim.load(random_checkpoint, device="cpu")
    with pytest.raises(ValueError, match="pair up"):
        sem.distance(torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        sem.distance(torch.rand(2, 4, 32, 32), torch.rand(2, 4, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        sem.distance(torch.rand(1, 3, 32, 32), torch.full((1, 3, 32, 32), float("nan")))


def test_classic_metrics_values() -> None:
    originals = torch.rand(3, 3, 16, 16)
    shifted = (originals + 0.1).clamp(0, 1)
    assert torch.equal(mse(originals, originals), torch.zeros(3))
    assert torch.isinf(psnr(originals, originals)).all()
    assert torch.allclose(ssim(originals, originals), torch.ones(3))
    error = ((originals - shifted) ** 2).flatten(1).mean(1)
    assert torch.allclose(mse(originals, shifted), error)
    assert torch.allclose(psnr(originals, shifted), 10 * torch.log10(1 / error))
    assert (ssim(originals, torch.rand(3, 3, 16, 16)) < 0.5).all()
    with pytest.raises(ValueError, match="same shape"):
        psnr(originals, originals[:, :1])


def test_lpips_is_none_or_per_pair() -> None:
    originals = torch.rand(2, 3, 32, 32)
    scores = lpips(originals, originals)
    assert scores is None or (scores.shape == (2,) and torch.allclose(scores, torch.zeros(2), atol=1e-4))


def test_matching_recovers_a_shuffled_batch() -> None:
    sem = SemSim.load()  # the packaged checkpoint: distances mean something
    from semsim_audit.data import load_dataset

    originals = load_dataset("photos", train=False).pixels[::10][:12]
    generator = torch.Generator().manual_seed(0)
    noisy = (originals + 0.03 * torch.randn(originals.shape, generator=generator)).clamp(0, 1)
    order = torch.randperm(12, generator=generator)
    matching = match(originals, noisy[order], sem)
    assert torch.equal(matching.original_index, torch.arange(12))
    assert torch.equal(order[matching.reconstruction_index], torch.arange(12))
    assert identifiability(originals, noisy, sem).float().mean() >= 0.9
    assert not identifiability(originals, noisy[order], sem).all()


def test_matching_unequal_counts_pairs_the_smaller_side(random_checkpoint: Path) -> None:
    sem = SemSim.load(random_checkpoint, device="cpu")
    originals = torch.rand(5, 3, 32, 32)
    matching = match(originals, originals[[3, 1]], sem)
    assert matching.original_index.tolist() == [1, 3]
    assert matching.reconstruction_index.tolist() == [1, 0]
    assert all(math.isclose(d, 0.0, abs_tol=1e-5) for d in matching.distance.tolist())
