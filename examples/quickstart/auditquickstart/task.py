"""What server and clients share: the dataset, the victim model and the local training loop."""

from __future__ import annotations

import functools
from itertools import cycle

import torch
from torch import nn
from torch.utils.data import DataLoader

from semsim_audit.data import ImageDataset, load_dataset, partition
from semsim_audit.models import model_for
from semsim_audit.strategies import record_batch

DATASET = "photos"


@functools.cache
def dataset(train: bool = True) -> ImageDataset:
    """The embedded photo dataset (built once per process; no download)."""
    return load_dataset(DATASET, train=train)  # type: ignore[return-value]


def make_model(name: str) -> nn.Module:
    """The victim model for the photo data."""
    return model_for(name, dataset().spec)


def client_shard(partition_id: int, num_partitions: int, seed: int = 0) -> ImageDataset:
    """This client's share of the training photos (an IID split, the same on every call)."""
    shards = partition(dataset(), num_partitions, "iid", seed=seed)
    return dataset().subset(shards[partition_id])


def train(model: nn.Module, data: ImageDataset, *, lr: float, local_steps: int, batch_size: int,
          seed: int) -> float:
    """An ordinary SGD loop; ``record_batch`` lets audit_mod see what the model consumed."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    total = 0.0
    for _, (images, labels) in zip(range(local_steps), cycle(loader), strict=False):
        record_batch(images, labels)  # a no-op unless this round audits this client
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        total += float(loss)
    return total / local_steps


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageDataset) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on ``data``."""
    model.eval()
    images, labels = data.spec.normalize(data.pixels), data.labels
    logits = model(images)
    loss = float(nn.functional.cross_entropy(logits, labels))
    return loss, float((logits.argmax(1) == labels).float().mean())
