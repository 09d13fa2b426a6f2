"""Fixtures for the Flower integration: Flower's task identity, a tiny task, a small SemSim."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from flwr.app import Context

from semsim_audit.data import load_dataset, partition
from semsim_audit.models import model_for
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


class Setup:
    """A tiny federated task: LeNet on 'photos', a few images per client."""

    def __init__(self, photos: Any, num_nodes: int = 2, per_client: int = 4) -> None:
        self.spec = photos.spec
        shards = partition(photos, num_nodes, "iid", seed=0)
        self.partitions = [photos.subset(shard[:per_client]) for shard in shards]

    def model_fn(self) -> torch.nn.Module:
        return model_for("lenet", self.spec)

    def load_partition(self, context: Context) -> Any:
        return self.partitions[int(context.node_config["partition-id"])]


@pytest.fixture
def setup(photos: Any) -> Setup:
    return Setup(photos)
