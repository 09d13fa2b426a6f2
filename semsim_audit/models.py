"""Victim models by name: the architectures the gradient-inversion literature attacks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from semsim_audit.core import DataSpec

__all__ = ["MODELS", "build_model", "model_for", "LeNet", "ConvNet", "resnet18_cifar"]


class LeNet(nn.Module):
    """The DLG LeNet: three 5x5 convolutions with sigmoid activations, then one linear layer.

    ``uniform_init`` draws every weight and bias from U(-0.5, 0.5), as in the DLG paper, which is
    what makes single-image reconstructions near-exact.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 uniform_init: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=1, padding=2), nn.Sigmoid(),
        )
        side = (image_size + 3) // 4
        self.classifier = nn.Linear(12 * side * side, num_classes)
        if uniform_init:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class ConvNet(nn.Module):
    """A small VGG-style ConvNet (ReLU), the usual victim in Inverting Gradients experiments.

    ``width`` is the channel count of the first block; ``batch_norm`` adds BatchNorm after every
    convolution (needed by BatchNorm-statistics priors such as GradInversion).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32,
                 batch_norm: bool = False) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=3, padding=1)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            return layers

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.MaxPool2d(2),
            *block(4 * width, 4 * width), nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Linear(4 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def resnet18_cifar(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 inputs: 3x3 stride-1 stem, no max-pool.

    ``width`` scales the four stages (width, 2w, 4w, 8w); 64 is torchvision's ResNet-18.
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    if width != 64:
        # torchvision fixes the stage widths at 64..512: rebuild the stages with its own helper.
        model.inplanes = width
        model.bn1 = nn.BatchNorm2d(width)
        model.layer1 = model._make_layer(BasicBlock, width, 2)
        model.layer2 = model._make_layer(BasicBlock, 2 * width, 2, stride=2)
        model.layer3 = model._make_layer(BasicBlock, 4 * width, 2, stride=2)
        model.layer4 = model._make_layer(BasicBlock, 8 * width, 2, stride=2)
        model.fc = nn.Linear(8 * width, num_classes)
    model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "convnet": ConvNet,
    "resnet18": resnet18_cifar,
}


def build_model(name: str, in_channels: int = 3, num_classes: int = 10, **options: object) -> nn.Module:
    """Build a registered victim model; unknown names raise ValueError listing the known ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    if name == "lenet":
        options.setdefault("image_size", 32)
    return factory(in_channels=in_channels, num_classes=num_classes, **options)


def model_for(name: str, spec: DataSpec, **options: object) -> nn.Module:
    """Build a registered victim model that fits a dataset's :class:`DataSpec`."""
    if name == "lenet":
        options.setdefault("image_size", spec.shape[1])
    return build_model(name, in_channels=spec.channels, num_classes=spec.num_classes, **options)
