"""Shared fixtures for the attack tests: real photos, client updates computed the way a client would."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semsim_audit.data import load_dataset


@pytest.fixture(scope="session")
def photos():
    return load_dataset("photos")


def _client_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy of one batch at the model's weights (FedSGD)."""
    loss = nn.functional.cross_entropy(model(images), labels)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> float:
    """PSNR in dB of [0, 1] images."""
    mse = (reconstruction - original).pow(2).mean().clamp_min(1e-12)
    return float(10.0 * torch.log10(1.0 / mse))


@pytest.fixture(scope="session")
def client_gradient():
    return _client_gradient


@pytest.fixture(scope="session")
def psnr():
    return _psnr


def one_per_class(dataset, classes) -> list[int]:
    """Index of the first sample of each given class."""
    targets = torch.as_tensor(dataset.targets)
    return [int(torch.nonzero(targets == c)[0]) for c in classes]


@pytest.fixture(scope="session")
def first_of_class():
    return one_per_class
