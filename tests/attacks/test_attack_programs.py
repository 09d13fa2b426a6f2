"""The stacked program computes what torch.func computes, and the engine falls back where it cannot."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import semsim_audit.attacks.objectives as objectives
from semsim_audit.attacks import ATTACKS, AttackConfig, Observation, run_attack
from semsim_audit.attacks.programs import StackedProgram, VmapProgram, _Setup, build_program, functional_model
from semsim_audit.models import model_for


def _observations(photos, client_gradient, model, indices, batch, **update):
    observations = []
    for start in range(0, len(indices), batch):
        chosen = indices[start:start + batch]
        images = torch.stack([photos[i][0] for i in chosen])
        labels = torch.tensor([photos[i][1] for i in chosen])
        if update:  # several local SGD steps: the observation is the weight delta
            client = copy.deepcopy(model)
            optimizer = torch.optim.SGD(client.parameters(), lr=update["lr"])
            for _ in range(update["steps"]):
                optimizer.zero_grad()
                nn.functional.cross_entropy(client(images), labels).backward()
                optimizer.step()
            observations.append(Observation.from_update(
                model, model.state_dict(), client.state_dict(), photos.spec, lr=update["lr"],
                local_steps=update["steps"], batch_size=1, num_samples=batch))
        else:
            observations.append(Observation.from_gradients(model, client_gradient(model, images, labels),
                                                           photos.spec, num_samples=batch))
        # Each observation gets its own weights, as clients of different rounds would send.
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(0.9)
    return observations


def _programs(observations, attack, restarts=2, labels=True, **settings):
    recipe = ATTACKS[attack]
    config = AttackConfig(restarts=restarts, **settings).resolve(recipe.settings)
    joint = config.labels == "joint"
    fixed = None if joint else torch.stack([torch.arange(o.num_samples) % o.spec.num_classes
                                            for o in observations])
    setup = _Setup(observations, config, torch.device("cpu"), fixed, joint, recipe.unroll)
    functional = functional_model(observations[0].model, config.model_mode)
    return StackedProgram(setup, functional), VmapProgram(setup, copy.deepcopy(functional)), joint


CASES = [
    ("lenet", {}, "dlg", 1, {}, {}),
    ("lenet", {}, "inverting-gradients", 2, {}, {}),
    ("convnet", {"width": 4, "batch_norm": True}, "gradinversion", 2, {}, {}),
    ("convnet", {"width": 4, "batch_norm": True}, "inverting-gradients", 2, {}, {"model_mode": "eval"}),
    ("resnet18", {"width": 4}, "inverting-gradients", 1, {}, {}),
    # Every convolution narrow (the channels-last _GroupedConv path), with BatchNorm and its prior.
    ("convnet", {"width": 2, "batch_norm": True}, "gradinversion", 2, {}, {}),
    # Wider than _NARROW channels a group after the first layer: the plain grouped convolution.
    ("convnet", {"width": 24}, "inverting-gradients", 1, {}, {}),
    ("lenet", {}, "fedavg", 2, {"lr": 0.1, "steps": 2}, {}),
]


@pytest.mark.parametrize(("name", "options", "attack", "batch", "update", "settings"), CASES)
def test_stacked_and_torch_func_programs_agree(photos, client_gradient, first_of_class, name, options, attack,
                                               batch, update, settings):
    torch.manual_seed(0)
    model = model_for(name, photos.spec, **options)
    if options.get("batch_norm"):
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
    observations = _observations(photos, client_gradient, model, first_of_class(photos, [1, 2, 3, 4]), batch,
                                 **update)
    stacked, lifted, joint = _programs(observations, attack, **settings)
    count, restarts, samples = len(observations), 2, observations[0].num_samples
    images = torch.randn(count, restarts, samples, *photos.spec.shape)
    logits = torch.randn(count, restarts, samples, photos.spec.num_classes) if joint else None
    one, other = stacked.evaluate(images, logits), lifted.evaluate(images, logits)
    torch.testing.assert_close(one.total, other.total, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(one.matching, other.matching, rtol=1e-4, atol=1e-6)
    scale = float(other.image_grad.abs().max())
    torch.testing.assert_close(one.image_grad, other.image_grad, rtol=1e-3, atol=1e-4 * scale)
    if joint:
        torch.testing.assert_close(one.label_grad, other.label_grad, rtol=1e-3,
                                   atol=1e-4 * float(other.label_grad.abs().max()))

    # Only some trials (what L-BFGS asks for once others stopped), and one trial alone (the model as
    # written, where the program has that path): their slots as in the full evaluation, zeros elsewhere.
    assert (stacked.plain is not None) == (update == {} and attack != "gradinversion")
    for chosen in ([0, count * restarts - 1], [count * restarts - 1]):
        wanted = torch.zeros(count * restarts, dtype=torch.bool)
        wanted[chosen] = True
        part = stacked.evaluate(images, logits, torch.tensor(chosen))
        mask = wanted.view(count, restarts)
        torch.testing.assert_close(part.total[mask], one.total[mask], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(part.matching[mask], one.matching[mask], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(part.image_grad[mask], one.image_grad[mask], rtol=1e-3, atol=1e-4 * scale)
        assert not part.total[~mask].any() and not part.image_grad[~mask].any()
        if joint:
            torch.testing.assert_close(part.label_grad[mask], one.label_grad[mask], rtol=1e-3,
                                       atol=1e-4 * float(other.label_grad.abs().max()))
            assert not part.label_grad[~mask].any()


@pytest.mark.parametrize("attack", ["dlg", "inverting-gradients"])
def test_both_programs_evaluate_alike_with_the_layer_by_layer_distance(photos, client_gradient,
                                                                       first_of_class, monkeypatch, attack):
    # Large models (ResNet-18) reduce the gradient distance layer by layer; with the limit at one
    # parameter the LeNet does too, through both programs (torch.func's vmap included).
    torch.manual_seed(0)
    model = model_for("lenet", photos.spec)
    observations = _observations(photos, client_gradient, model, first_of_class(photos, [1, 2]), 1)
    images = torch.randn(2, 2, 1, *photos.spec.shape)
    logits = torch.randn(2, 2, 1, photos.spec.num_classes) if attack == "dlg" else None
    as_row = [program.evaluate(images, logits) for program in _programs(observations, attack)[:2]]
    monkeypatch.setattr(objectives, "ROW_LIMIT", 1)
    by_layer = [program.evaluate(images, logits) for program in _programs(observations, attack)[:2]]
    for row, layers in zip(as_row, by_layer, strict=True):
        torch.testing.assert_close(layers.total, row.total, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(layers.image_grad, row.image_grad, rtol=1e-4,
                                   atol=1e-6 * float(row.image_grad.abs().max()))


class _FixedReshape(nn.Module):
    """A model whose forward flattens to a fixed width: the stacked form cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sigmoid(self.conv(x)).view(-1, 4 * 8 * 8))


class _LayerNormNet(nn.Module):
    """A layer the stacked form does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm([3, 32, 32])
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.norm(x), 1))


class _SamePadding(nn.Module):
    """Convolutions with padding='same' (one dilated): the stacked form pads them explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding="same")
        self.second = nn.Conv2d(4, 4, 3, padding="same", dilation=2)
        self.fc = nn.Linear(4 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.sigmoid(self.second(torch.sigmoid(self.first(x)))), 1))


def test_same_padding_runs_stacked_and_agrees_with_torch_func(photos, client_gradient):
    torch.manual_seed(0)
    observations = _observations(photos, client_gradient, _SamePadding(), [0, 1], 1)
    stacked, lifted, _ = _programs(observations, "inverting-gradients")
    images = torch.randn(2, 2, 1, *photos.spec.shape)
    one, other = stacked.evaluate(images, None), lifted.evaluate(images, None)
    torch.testing.assert_close(one.total, other.total, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(one.image_grad, other.image_grad, rtol=1e-3,
                               atol=1e-4 * float(other.image_grad.abs().max()))


@pytest.mark.parametrize("model_class", [_FixedReshape, _LayerNormNet])
def test_models_the_stacked_form_cannot_run_fall_back_to_torch_func_with_a_note(photos, client_gradient,
                                                                                model_class):
    torch.manual_seed(0)
    model = model_class()
    observations = _observations(photos, client_gradient, model, [0, 1], 1)
    notes: list[str] = []
    config = AttackConfig(restarts=2).resolve(ATTACKS["inverting-gradients"].settings)
    program = build_program(observations, config, torch.device("cpu"), torch.tensor([[0], [1]]),
                            joint_labels=False, unroll=False, note=notes.append)
    assert program.name == "vmap" and "torch.func" in notes[0]
    result = run_attack("inverting-gradients", observations[0], AttackConfig(iterations=2))
    assert result.status == "ok" and any("torch.func" in note for note in result.notes)


def test_the_usual_victims_use_the_stacked_program(photos, client_gradient):
    victims = (("lenet", {}), ("convnet", {"width": 4, "batch_norm": True}), ("resnet18", {"width": 4}))
    for name, options in victims:
        model = model_for(name, photos.spec, **options)
        observations = _observations(photos, client_gradient, model, [0], 1)
        config = AttackConfig().resolve(ATTACKS["inverting-gradients"].settings)
        program = build_program(observations, config, torch.device("cpu"), torch.tensor([[0]]),
                                joint_labels=False, unroll=False)
        assert program.name == "stacked", name
