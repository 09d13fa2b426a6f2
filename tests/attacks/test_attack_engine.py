import copy

import pytest
import torch
from torch import nn

from semsim_audit.attacks import ATTACKS, AttackConfig, AttackResult, Observation, run_attack, run_attacks
from semsim_audit.models import model_for


def _observations(photos, client_gradient, model, indices, batch=1, **options):
    """One FedSGD observation per group of `batch` consecutive indices."""
    observations, originals = [], []
    for start in range(0, len(indices), batch):
        chosen = indices[start:start + batch]
        images = torch.stack([photos[i][0] for i in chosen])
        labels = torch.tensor([photos[i][1] for i in chosen])
        gradient = client_gradient(model, images, labels)
        observations.append(Observation.from_gradients(model, gradient, photos.spec, num_samples=batch,
                                                       **options))
        originals.append(photos.pixels[chosen])
    return observations, originals


def test_registry_has_the_published_attacks_and_unknown_names_list_them(photos, client_gradient):
    assert {"dlg", "idlg", "inverting-gradients", "gradinversion", "fedavg"} <= set(ATTACKS)
    model = model_for("lenet", photos.spec)
    (observation,), _ = _observations(photos, client_gradient, model, [0])
    with pytest.raises(ValueError, match="known attacks: dlg, idlg, inverting-gradients"):
        run_attack("deep-leakage", observation, AttackConfig(iterations=1))
    with pytest.raises(ValueError, match="layer_weights has 2 entries"):
        run_attack("dlg", observation, AttackConfig(iterations=1, layer_weights=(1.0, 2.0)))
    with pytest.raises(ValueError, match="line_search='strong-wolfe' needs optimizer='lbfgs'; "
                                         "inverting-gradients runs 'signed-adam'"):
        run_attack("inverting-gradients", observation, AttackConfig(iterations=1, line_search="strong-wolfe"))


@pytest.mark.slow
def test_batched_equals_sequential(photos, client_gradient, first_of_class):
    torch.manual_seed(0)
    model = model_for("convnet", photos.spec, width=8)
    indices = first_of_class(photos, [2, 5, 7])
    observations, _ = _observations(photos, client_gradient, model, indices)
    # A second architecture in the same call: run_attacks splits it into its own batch.
    other = model_for("lenet", photos.spec)
    extra, _ = _observations(photos, client_gradient, other, first_of_class(photos, [4]))
    config = AttackConfig(iterations=12, restarts=2, seed=5)
    batched = run_attacks("inverting-gradients", observations + extra, config)
    alone = [run_attack("inverting-gradients", o, config) for o in observations + extra]
    assert len(batched) == 4
    for together, single in zip(batched, alone, strict=True):
        assert together.status == single.status == "ok"
        assert torch.equal(together.labels, single.labels)
        assert torch.allclose(together.images, single.images, atol=1e-4)
        assert together.loss == pytest.approx(single.loss, rel=1e-4, abs=1e-6)
    # Different targets give different reconstructions: the batch did not collapse into one trial.
    assert not torch.allclose(batched[0].images, batched[1].images, atol=1e-2)


def test_a_diverging_trial_is_reported_and_the_others_finish(photos, client_gradient, first_of_class, psnr):
    torch.manual_seed(0)
    model = model_for("lenet", photos.spec)
    indices = first_of_class(photos, [1, 6])
    (healthy, doomed), originals = _observations(photos, client_gradient, model, indices)
    # A finite but absurd update (1e30): the L2 matching loss overflows to inf at the first step.
    doomed = Observation.from_gradients(model, [g * 1e30 for g in doomed.target.values()], photos.spec)
    config = AttackConfig(iterations=8, restarts=2, seed=1)
    together = run_attacks("idlg", [healthy, doomed], config)
    alone = run_attack("idlg", healthy, config)
    assert together[1].status == "failed" and "diverged" in together[1].reason
    assert [t.status for t in together[1].trials] == ["failed", "failed"]
    assert together[1].images.shape == (1, 3, 32, 32) and torch.all(together[1].images == 0)
    assert together[0].status == "ok" and all(t.status == "ok" for t in together[0].trials)
    # The healthy trial goes as far as it goes alone. Not bit for bit: on a CPU the stacked
    # convolutions round differently for another number of trials, and L-BFGS amplifies that.
    assert torch.isfinite(together[0].images).all()
    assert psnr(together[0].images, originals[0]) == pytest.approx(psnr(alone.images, originals[0]), abs=1.0)


def test_result_contract(photos, client_gradient, first_of_class):
    model = model_for("lenet", photos.spec)
    observations, _ = _observations(photos, client_gradient, model, first_of_class(photos, [3, 8]), batch=2)
    result = run_attack("inverting-gradients", observations[0], AttackConfig(iterations=3, device="auto"))
    assert isinstance(result, AttackResult)
    assert result.images.shape == (2, 3, 32, 32) and result.images.device.type == "cpu"
    assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
    assert result.labels.dtype == torch.long and result.labels.tolist() == [3, 8]
    assert result.iterations == 3 and result.seconds > 0 and result.status == "ok" and result.reason is None
    assert len(result.trials) == 1 and result.loss == result.trials[0].loss


def test_known_labels_are_used_as_given(photos, client_gradient, first_of_class):
    model = model_for("lenet", photos.spec)
    indices = first_of_class(photos, [0])
    observations, _ = _observations(photos, client_gradient, model, indices, labels=[9])
    result = run_attack("dlg", observations[0], AttackConfig(iterations=2))
    assert result.labels.tolist() == [9]  # the threat model's labels win over joint optimisation


def test_gradinversion_uses_batchnorm_statistics_and_notes_the_fallback(photos, client_gradient,
                                                                        first_of_class):
    torch.manual_seed(0)
    indices = first_of_class(photos, [0, 4])
    with_bn = model_for("convnet", photos.spec, width=8, batch_norm=True)
    with torch.no_grad():  # running statistics the global model would have after some training
        for module in with_bn.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    observations, _ = _observations(photos, client_gradient, with_bn, indices, batch=2)
    config = AttackConfig(iterations=4, restarts=2)
    result = run_attack("gradinversion", observations[0], config)
    assert result.status == "ok" and result.labels.tolist() == [0, 4]
    assert not any("BatchNorm" in note for note in result.notes)
    no_bn, _ = _observations(photos, client_gradient, model_for("lenet", photos.spec), indices, batch=2)
    fallback = run_attack("gradinversion", no_bn[0], config)
    assert fallback.status == "ok"
    assert any("no BatchNorm" in note for note in fallback.notes)


def test_attack_leaves_the_callers_model_alone(photos, client_gradient):
    model = model_for("convnet", photos.spec, width=4, batch_norm=True)
    observations, _ = _observations(photos, client_gradient, model, [0])
    before = copy.deepcopy(model.state_dict())
    run_attack("gradinversion", observations[0], AttackConfig(iterations=2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


@pytest.mark.slow
def test_dlg_with_idlg_labels_reconstructs_real_photos_on_the_sigmoid_lenet(photos, client_gradient,
                                                                           first_of_class, psnr):
    # DLG's optimisation (L2 matching, L-BFGS from lr 1, here with strong-Wolfe steps) with the label read
    # off the gradient (iDLG), at the authors' budget: 300 L-BFGS iterations of up to 20 steps each.
    torch.manual_seed(0)
    model = model_for("lenet", photos.spec, uniform_init=True)
    indices = first_of_class(photos, [1, 2, 3, 4])
    observations, originals = _observations(photos, client_gradient, model, indices)
    results = run_attacks("idlg", observations, AttackConfig(iterations=300, seed=0))
    scores = [psnr(r.images, o) for r, o in zip(results, originals, strict=True)]
    assert sum(scores) / len(scores) >= 30.0, scores
    assert [r.labels.item() for r in results] == [1, 2, 3, 4]


def _local_sgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float, steps: int) -> dict:
    """A FedAvg client: `steps` plain SGD steps on its batch; returns the weights it sends back."""
    client = copy.deepcopy(model)
    optimizer = torch.optim.SGD(client.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(client(images), labels).backward()
        optimizer.step()
    return client.state_dict()


@pytest.mark.slow
def test_fedavg_attack_beats_reading_the_delta_as_one_gradient(photos, first_of_class, psnr):
    torch.manual_seed(0)
    model = model_for("lenet", photos.spec)
    indices = first_of_class(photos, [1, 5])
    images = torch.stack([photos[i][0] for i in indices])
    labels = torch.tensor([1, 5])
    lr, steps = 0.5, 3
    client_state = _local_sgd(model, images, labels, lr, steps)
    observation = Observation.from_update(model, model.state_dict(), client_state, photos.spec, lr=lr,
                                          local_steps=steps, batch_size=2, num_samples=2, labels=labels)
    config = AttackConfig(iterations=FEDAVG_ITERATIONS, seed=0)
    unrolled = run_attack("fedavg", observation, config)
    one_gradient = run_attack("inverting-gradients", observation, config)
    originals = photos.pixels[indices]
    assert psnr(unrolled.images, originals) > psnr(one_gradient.images, originals) + 2.0
    assert any("averaged gradient" in note for note in one_gradient.notes)


FEDAVG_ITERATIONS = 100


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_cpu_give_the_same_reconstruction(photos, client_gradient, first_of_class):
    torch.manual_seed(0)
    model = model_for("convnet", photos.spec, width=8)
    observations, _ = _observations(photos, client_gradient, model, first_of_class(photos, [2, 6]))
    results = {device: run_attacks("inverting-gradients", observations,
                                   AttackConfig(iterations=5, optimizer="adam", device=device))
               for device in ("cpu", "cuda")}
    for on_cpu, on_cuda in zip(results["cpu"], results["cuda"], strict=True):
        assert torch.allclose(on_cpu.images, on_cuda.images, atol=1e-3)
