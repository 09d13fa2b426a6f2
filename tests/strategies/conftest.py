"""Fixtures for the Flower integration: Flower's task identity, a tiny task, a small SemSim."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from audit_apps import Setup

from semsim_audit.data import load_dataset
from semsim_audit.strategies.local import set_task_identity


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """flwr 1.41 stamps new Messages with the running task's identity: give tests one."""
    saved = set_task_identity()
    yield
    set_task_identity(*saved)


@pytest.fixture(scope="session")
def photos() -> Any:
    return load_dataset("photos", train=True)


@pytest.fixture(scope="session")
def small_semsim() -> Any:
    """A SemSim with untrained weights: scores are meaningless but every code path runs."""
    from semsim_audit.semsim import CheckpointMetadata, SemSim, SemSimNet

    torch.manual_seed(0)
    metadata = CheckpointMetadata(threshold=0.5, annotator="proxy", data="untrained test network", width=8,
                                  embedding_dim=64)
    return SemSim(SemSimNet(width=8), metadata, device="cpu")


@pytest.fixture
def setup(photos: Any) -> Setup:
    return Setup(photos)
