"""The SemSim embedding network: a CIFAR-style ResNet-18 whose 512-d pooled feature is the embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attacks.runtime import normalize
from semsim_audit.data import CIFAR100_STATS
from semsim_audit.models import resnet18_cifar

__all__ = ["ARCHITECTURE", "INPUT_SIZE", "NORMALISATION", "SemSimNet", "prepare_images"]

ARCHITECTURE = "resnet18-cifar"
INPUT_SIZE = 32
# The released model normalises with CIFAR-100 statistics whatever the data; so do we.
NORMALISATION = {"mean": list(CIFAR100_STATS[0]), "std": list(CIFAR100_STATS[1])}


def prepare_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check [0, 1] images (N, C, H, W) with C in {1, 3}; return 3-channel float images at 32x32."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, C, H, W) tensor with C = 1 or 3, "
                         f"got shape {tuple(images.shape)}")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        # Anti-aliased downsampling keeps large inputs from aliasing into texture the model never saw.
        images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                               antialias=True, align_corners=False)
    return images.clamp(0.0, 1.0)


class SemSimNet(nn.Module):
    """[0, 1] images of any size and 1 or 3 channels -> L2-normalised embeddings (N, 8 * width)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.width = width
        self.backbone = resnet18_cifar(in_channels=3, num_classes=1, width=width)
        self.backbone.fc = nn.Identity()

    @property
    def embedding_dim(self) -> int:
        return 8 * self.width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = prepare_images(images)
        features = self.backbone(normalize(pixels, NORMALISATION["mean"], NORMALISATION["std"]))
        return F.normalize(features, p=2, dim=1)
