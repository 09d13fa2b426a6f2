"""The SemSim embedding network: a CIFAR-style ResNet-18, with or without a projection head.

``head="none"`` is the released model: the 512-d (8 x width) pooled feature is the embedding.
``head="stats"`` (the default of ``semsim-audit semsim train``) summarises each image by the
per-channel mean and standard deviation of the stem and of every ResNet stage, standardises that with
statistics of the training images (stored as buffers), and maps it with a two-layer MLP to a 64-d
embedding. With a frozen backbone only the head learns, which needs far fewer annotated identities
(``benchmarks/semsim_sample_efficiency.py``). Both embeddings are L2-normalised.

``head="stats-layout"`` (the default checkpoint v3's) adds two things whole-image statistics cannot
see. The first is layout: each channel's mean over the top and over the bottom half of the stem and of
every stage. A patch shuffle or an occlusion changes these, and a horizontal flip does not. The second
is sharpness: at three scales, the spread of the image's high frequencies (its difference from a 3x3
local mean, and its mean absolute gradient) relative to its overall contrast, as log ratios. Blur and
pixelation change these, and a contrast or brightness change does not.

``head="stats-early"`` (the shipped default checkpoint's since v4) is the layout head on the stem and
the first two stages only. Dropping the statistics of the random, untrained backbone's deeper stages
raised the balanced accuracy on validation identities and on the simulated annotator's held-out split
(BENCHMARKS.md), and skipping those stages makes scoring cheaper.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from semsim_audit.core import normalize, resize

__all__ = ["ARCHITECTURE", "HEADS", "STATS_HEADS", "Head", "INPUT_SIZE", "NORMALISATION", "SemSimNet",
           "prepare_images", "sharpness"]

ARCHITECTURE = "resnet18-cifar"
INPUT_SIZE = 32
# The released model normalises with CIFAR-100's statistics whatever the data; so do we.
NORMALISATION = {"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]}
HEADS = ("none", "stats", "stats-layout", "stats-early")
# Heads on feature statistics (a frozen backbone, an MLP on standardised statistics).
STATS_HEADS = ("stats", "stats-layout", "stats-early")
# Those that add the half-means and the sharpness to the means and spreads.
LAYOUT_HEADS = ("stats-layout", "stats-early")
# ResNet stages whose statistics a stats head reads (after the stem), and their widths in units of width.
STAGES_READ = {"stats": 4, "stats-layout": 4, "stats-early": 2}
STAGE_WIDTHS = (1, 2, 4, 8)
Head = Literal["none", "stats", "stats-layout", "stats-early"]
SHARPNESS_SCALES = (1, 2, 4)
HEAD_HIDDEN = 256
HEAD_DIM = 64


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
        images = resize(images, INPUT_SIZE)
    return images.clamp(0.0, 1.0)


def backbone(width: int) -> ResNet:
    """The released backbone: torchvision's ResNet-18 for 32x32 inputs (3x3 stride-1 stem, no max-pool),
    stages of width w, 2w, 4w, 8w, no classifier.

    SemSim owns this definition (the victim models do not share it): checkpoints store its
    parameter names and shapes, and a change here would silently change every judge. The layers
    are built in torchvision's order, so a seeded random backbone is the same on every version.
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=1)
    if width != 64:
        model.inplanes = width
        model.bn1 = nn.BatchNorm2d(width)
        model.layer1 = model._make_layer(BasicBlock, width, 2)
        model.layer2 = model._make_layer(BasicBlock, 2 * width, 2, stride=2)
        model.layer3 = model._make_layer(BasicBlock, 4 * width, 2, stride=2)
        model.layer4 = model._make_layer(BasicBlock, 8 * width, 2, stride=2)
        model.fc = nn.Linear(8 * width, 1)
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Contrast-free sharpness of [0, 1] images (N, 3, H, W): (N, 2 x len(SHARPNESS_SCALES)).

    At each scale (the grey image average-pooled by 1, 2, 4): log of the standard deviation of its
    difference from the 3x3 local mean, and log of its mean absolute gradient, each minus the log of the
    grey image's standard deviation.
    """
    grey = images.mean(1, keepdim=True)
    features = []
    for scale in SHARPNESS_SCALES:
        level = F.avg_pool2d(grey, scale) if scale > 1 else grey
        contrast = torch.log(level.flatten(1).std(1) + 1e-4)
        high = level - F.avg_pool2d(F.pad(level, (1, 1, 1, 1), mode="replicate"), 3, 1)
        gradient = ((level[..., :, 1:] - level[..., :, :-1]).abs().flatten(1).mean(1)
                    + (level[..., 1:, :] - level[..., :-1, :]).abs().flatten(1).mean(1))
        features += [torch.log(high.flatten(1).std(1) + 1e-4) - contrast,
                     torch.log(gradient + 1e-4) - contrast]
    return torch.stack(features, 1)


def _halves(hidden: torch.Tensor) -> list[torch.Tensor]:
    """Each channel's mean over the top and over the bottom half of a feature map (flip-invariant layout)."""
    middle = hidden.shape[2] // 2
    return [hidden[:, :, :middle].mean((2, 3)), hidden[:, :, middle:].mean((2, 3))]


class SemSimNet(nn.Module):
    """[0, 1] images of any size and 1 or 3 channels -> L2-normalised embeddings (N, embedding_dim)."""

    def __init__(self, width: int = 64, head: Head = "none") -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.width = width
        self.head_kind = head
        self.backbone = backbone(width)
        if head in STATS_HEADS:
            features = self.statistics_dim
            self.head = nn.Sequential(nn.Linear(features, HEAD_HIDDEN), nn.ReLU(),
                                      nn.Linear(HEAD_HIDDEN, HEAD_DIM))
            self.register_buffer("feature_mean", torch.zeros(features))
            self.register_buffer("feature_std", torch.ones(features))

    @property
    def embedding_dim(self) -> int:
        return HEAD_DIM if self.head_kind in STATS_HEADS else 8 * self.width

    @property
    def statistics_dim(self) -> int:
        """Mean and std per channel of the stem (width) and the stages read (width, 2w, 4w, 8w: 32 x width
        for all four); with a layout head also the two half-means per channel and the sharpness."""
        channels = self.width * (1 + sum(STAGE_WIDTHS[:STAGES_READ[self.head_kind]]))
        if self.head_kind in LAYOUT_HEADS:
            return 4 * channels + 2 * len(SHARPNESS_SCALES)
        return 2 * channels

    def statistics(self, images: torch.Tensor) -> torch.Tensor:
        """Per-channel mean and std of the stem and of each ResNet stage read (and, with a layout head,
        the half-means and the sharpness): (N, statistics_dim)."""
        backbone = self.backbone
        prepared = prepare_images(images)
        layout = self.head_kind in LAYOUT_HEADS
        stages = (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        pixels = normalize(prepared, NORMALISATION["mean"], NORMALISATION["std"])
        hidden = backbone.relu(backbone.bn1(backbone.conv1(pixels)))
        parts = [hidden.mean((2, 3)), hidden.std((2, 3))]
        halves = _halves(hidden) if layout else []
        for stage in stages[:STAGES_READ[self.head_kind]]:
            hidden = stage(hidden)
            parts += [hidden.mean((2, 3)), hidden.std((2, 3))]
            if layout:
                halves += _halves(hidden)
        if layout:
            parts += [sharpness(prepared), *halves]
        return torch.cat(parts, dim=1)

    def embed_statistics(self, statistics: torch.Tensor) -> torch.Tensor:
        """The stats head alone: statistics (N, statistics_dim) -> L2-normalised embeddings."""
        standardised = (statistics - self.feature_mean) / self.feature_std
        return F.normalize(self.head(standardised), p=2, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.head_kind in STATS_HEADS:
            return self.embed_statistics(self.statistics(images))
        pixels = prepare_images(images)
        features = self.backbone(normalize(pixels, NORMALISATION["mean"], NORMALISATION["std"]))
        return F.normalize(features, p=2, dim=1)
