"""The gradient-matching objectives: large models reduce layer by layer, to the same values and gradients."""

from __future__ import annotations

import pytest
import torch

import semsim_audit.attacks.objectives as objectives
from semsim_audit.attacks.objectives import gradient_distance


def _layers(trials: int, seed: int, pruned: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (10, 64), "fc.bias": (10,)}
    layers = {name: torch.randn((trials, *shape), generator=generator, dtype=torch.float64)
              for name, shape in shapes.items()}
    if pruned:  # a pruned update: about half of every layer zeroed
        layers = {name: value * (torch.rand(value.shape, generator=generator, dtype=torch.float64) > 0.5)
                  for name, value in layers.items()}
    return layers


@pytest.mark.parametrize("objective", ["l2", "cosine"])
@pytest.mark.parametrize("support_only", [False, True])
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0, 1.0], [2.0, 0.5, 1.0, 0.0]])
def test_layer_by_layer_gives_the_concatenated_rows_values_and_gradients(monkeypatch, objective, support_only,
                                                                          weights) -> None:
    observed = _layers(3, seed=1, pruned=support_only)

    def value_and_gradients(limit: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        monkeypatch.setattr(objectives, "ROW_LIMIT", limit)
        produced = {name: value.requires_grad_(True) for name, value in _layers(3, seed=2).items()}
        distance = gradient_distance(produced, observed, weights, objective, support_only)
        return distance.detach(), list(torch.autograd.grad(distance.sum(), list(produced.values())))

    row, row_gradients = value_and_gradients(1 << 40)
    layers, layer_gradients = value_and_gradients(1)
    assert row.shape == (3,) and bool((row > 0).all())
    torch.testing.assert_close(layers, row)
    for by_layer, by_row in zip(layer_gradients, row_gradients, strict=True):
        torch.testing.assert_close(by_layer, by_row)


def test_the_layer_by_layer_path_refuses_an_unknown_objective(monkeypatch) -> None:
    monkeypatch.setattr(objectives, "ROW_LIMIT", 1)
    layers = _layers(1, seed=0)
    with pytest.raises(ValueError, match="unknown objective 'l1'"):
        gradient_distance(layers, layers, [1.0] * 4, "l1")


def test_resnet_sized_updates_take_the_layer_by_layer_path() -> None:
    # ResNet-18's 11M parameters are over the limit; the LeNet's and a width-64 ConvNet's are under it.
    from semsim_audit.data import load_dataset
    from semsim_audit.models import model_for

    spec = load_dataset("photos", train=False).spec

    def size(name: str, **options) -> int:
        return sum(p.numel() for p in model_for(name, spec, **options).parameters())

    assert size("lenet") < size("convnet", width=64) < objectives.ROW_LIMIT <= size("resnet18")
