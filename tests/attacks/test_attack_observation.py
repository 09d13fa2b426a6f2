import copy
import math

import pytest
import torch
from torch import nn

from semsim_audit.attacks import ATTACKS, AttackConfig, DataSpec, Observation, batch_groups
from semsim_audit.models import model_for

SPEC = DataSpec(shape=(3, 32, 32), num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _sgd_client(model: nn.Module, images, labels, lr, steps, momentum=0.0, weight_decay=0.0):
    """What a Flower client does: `steps` SGD steps on its batch; returns its new state dict."""
    client = copy.deepcopy(model)
    client.train()
    optimizer = torch.optim.SGD(client.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(client(images), labels).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in client.state_dict().items()}


def test_one_sgd_step_gives_back_the_exact_gradient(client_gradient):
    torch.manual_seed(0)
    model = model_for("lenet", SPEC)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    expected = client_gradient(model, images, labels)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    client_state = _sgd_client(model, images, labels, lr=0.05, steps=1, weight_decay=1e-3)
    obs = Observation.from_update(model, global_state, client_state, SPEC, lr=0.05, num_samples=2,
                                  batch_size=2, weight_decay=1e-3)
    assert obs.kind == "gradient"
    for (name, observed), truth in zip(obs.target.items(), expected, strict=True):
        assert torch.allclose(observed, truth, atol=2e-4, rtol=1e-3), name


def test_several_steps_keep_the_weight_delta_and_batchnorm_buffers_are_not_gradients():
    torch.manual_seed(0)
    model = model_for("convnet", SPEC, width=4, batch_norm=True)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    client_state = _sgd_client(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), lr=0.1, steps=3)
    obs = Observation.from_update(model, global_state, client_state, SPEC, lr=0.1, local_steps=3,
                                  batch_size=2, num_samples=2)
    assert obs.kind == "update"
    assert list(obs.target) == [name for name, _ in model.named_parameters()]
    assert not any("running" in name for name in obs.target)
    # The attacker's model carries the GLOBAL running statistics, not the client's updated ones.
    running = "features.1.running_mean"
    assert torch.equal(obs.buffers[running], global_state[running])
    assert not torch.equal(client_state[running], global_state[running])
    name = "classifier.weight"
    assert torch.allclose(obs.target[name], global_state[name] - client_state[name])


def test_from_gradients_accepts_a_list_or_a_mapping(client_gradient):
    model = model_for("lenet", SPEC)
    gradients = client_gradient(model, torch.randn(1, 3, 32, 32), torch.tensor([4]))
    by_list = Observation.from_gradients(model, gradients, SPEC)
    names = [name for name, _ in model.named_parameters()]
    by_name = Observation.from_gradients(model, dict(zip(names, gradients, strict=True)), SPEC, labels=[4])
    assert all(torch.equal(by_list.target[n], by_name.target[n]) for n in names)
    assert by_name.labels.tolist() == [4] and by_list.labels is None


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s.__setitem__("classifier.bias", torch.full((10,), math.nan)), "classifier.bias"),
    (lambda s: s.__setitem__("features.0.weight", torch.full((12, 3, 5, 5), math.inf)), "features.0.weight"),
    (lambda s: s.pop("features.2.bias"), "features.2.bias"),
    (lambda s: s.__setitem__("classifier.weight", torch.zeros(10, 7)), "classifier.weight"),
])
def test_bad_client_update_raises_naming_the_parameter(corrupt, message):
    model = model_for("lenet", SPEC)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    client_state = {k: v.clone() for k, v in global_state.items()}
    corrupt(client_state)
    with pytest.raises(ValueError, match=message):
        Observation.from_update(model, global_state, client_state, SPEC, lr=0.1)


@pytest.mark.parametrize("options, message", [
    ({"lr": 0.0}, "lr"), ({"lr": 0.1, "local_steps": 0}, "local_steps"),
    ({"lr": 0.1, "momentum": 1.5}, "momentum"), ({"lr": 0.1, "labels": [3, 4]}, "labels"),
    ({"lr": 0.1, "labels": [12]}, "labels"), ({"lr": 0.1, "num_samples": -1}, "num_samples"),
])
def test_bad_metadata_raises_naming_the_field(options, message):
    model = model_for("lenet", SPEC)
    state = model.state_dict()
    with pytest.raises(ValueError, match=message):
        Observation.from_update(model, state, state, SPEC, **options)


def test_bad_gradients_raise_naming_the_parameter():
    model = model_for("lenet", SPEC)
    shapes = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="gradients has 3 tensors"):
        Observation.from_gradients(model, [torch.zeros(s) for s in shapes[:3]], SPEC)
    broken = [torch.zeros(s) for s in shapes]
    broken[1][0] = math.nan
    with pytest.raises(ValueError, match="features.0.bias"):
        Observation.from_gradients(model, broken, SPEC)


def test_observations_are_grouped_by_what_can_share_a_batch(client_gradient):
    lenet, other_lenet = model_for("lenet", SPEC), model_for("lenet", SPEC)
    convnet = model_for("convnet", SPEC, width=4)
    image, label = torch.randn(1, 3, 32, 32), torch.tensor([1])

    def observe(model, **options):
        return Observation.from_gradients(model, client_gradient(model, image, label), SPEC, **options)

    observations = [observe(lenet), observe(convnet), observe(other_lenet), observe(lenet, labels=[1])]
    assert batch_groups(observations) == [[0, 2], [1], [3]]


def test_config_builds_from_a_dict_and_names_bad_keys():
    config = AttackConfig(**{"iterations": 20, "restarts": 2, "seed": 3, "lr": 0.1, "tv_weight": 0.0,
                             "device": "auto"})
    assert config.iterations == 20 and config.restarts == 2
    with pytest.raises(ValueError, match="itterations"):
        AttackConfig(**{"itterations": 20})
    with pytest.raises(ValueError, match="restarts"):
        AttackConfig(restarts=0)
    with pytest.raises(ValueError, match="optimizer"):
        AttackConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="iterations"):
        AttackConfig(iterations=True)
    with pytest.raises(ValueError, match="lr"):
        AttackConfig(lr=float("nan"))


def test_a_recipe_fills_what_the_user_left_unset_and_the_user_wins():
    recipe = ATTACKS["inverting-gradients"].settings
    resolved = AttackConfig(iterations=7, tv_weight=0.5).resolve(recipe)
    assert (resolved.objective, resolved.optimizer, resolved.schedule, resolved.box) == (
        "cosine", "signed-adam", True, True)
    assert (resolved.iterations, resolved.tv_weight, resolved.lr) == (7, 0.5, recipe.lr)
    # Setting a value equal to the generic default still counts as the user's choice.
    assert AttackConfig(objective="l2").resolve(recipe).objective == "l2"
    assert AttackConfig().resolve(ATTACKS["dlg"].settings).optimizer == "lbfgs"
