"""Shared fixtures: a tiny annotation folder in the released layout and a small random checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semsim_audit.semsim.checkpoint import save_checkpoint
from semsim_audit.semsim.model import SemSimNet
from semsim_audit.semsim.proxy import write_proxy_annotations


def pattern_images(count: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    """Distinct smooth colour patterns (3, 32, 32): stripes, rings and blobs at random frequencies."""
    rng = np.random.default_rng(seed)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij"))
    images = []
    for number in range(count):
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(2, 8)
        direction = torch.tensor([np.cos(angle), np.sin(angle)], dtype=torch.float32).view(2, 1, 1)
        wave = torch.sin(frequency * (grid * direction).sum(0) + rng.uniform(0, 6))
        colour = torch.from_numpy(rng.uniform(0.1, 0.9, size=(3, 1, 1))).float()
        images.append((f"pattern{number}", (0.5 + 0.4 * wave * colour).clamp(0, 1)))
    return images


@pytest.fixture(scope="session")
def annotation_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 identities, 2 recognizable + 2 unrecognizable reconstructions each, 6 extra negatives."""
    root = tmp_path_factory.mktemp("annotations")
    return write_proxy_annotations(root, pattern_images(12, seed=3), seed=4, positives=2, negatives=2,
                                   others=6)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained width-4 checkpoint (fast to load and run)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints") / "random.safetensors"
    save_checkpoint(path, SemSimNet(width=4), threshold=0.5, annotator="proxy", data="random weights (test)")
    return path
