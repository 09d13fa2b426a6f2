"""The one engine: candidate images of (observations x restarts) optimised together.

Each trial's loss is written for one observation and one restart and lifted with ``torch.func``:
``grad`` of the victim's training loss gives the candidate's gradient (inner level), ``grad`` of the
matching loss w.r.t. the images differentiates through it (double backward), and two ``vmap``s run
every trial as one batched program. Observations differ in weights and observed update; restarts
of one observation share them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from semsim_audit.attacks.config import AttackConfig
from semsim_audit.attacks.objectives import batchnorm_prior, gradient_distance, l2_prior, total_variation
from semsim_audit.attacks.observation import Observation
from semsim_audit.attacks.optimizers import make_optimizer, step_factor

__all__ = ["Plan", "EngineOutput", "optimise", "batchnorm_layers"]


@dataclass(frozen=True)
class Plan:
    """One batched optimisation: the resolved settings and what follows from the recipe and the data."""

    settings: AttackConfig
    device: torch.device
    joint_labels: bool   # labels are optimised with the images (DLG) instead of fixed
    unroll: bool         # match the weight delta of unrolled local steps (FedAvg)


@dataclass
class EngineOutput:
    """Final candidates of every trial, on the CPU, indexed (observation, restart, ...)."""

    images: torch.Tensor          # (O, R, B, C, H, W), normalised model-input space
    labels: torch.Tensor          # (O, R, B) long
    matching_loss: torch.Tensor   # (O, R), gradient-matching loss of the final images
    alive: torch.Tensor           # (O, R) bool: False where the trial produced NaN/inf
    seconds: float


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that carry running statistics (what a BN prior matches)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, _BatchNorm) and module.running_mean is not None]


class _BatchNormProbe:
    """Records the batch mean/var of every BatchNorm input during one forward pass, when armed."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.records: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        modules = dict(model.named_modules())
        for name in names:
            modules[name].register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.records is not None:
            features = inputs[0]
            dims = [0] + list(range(2, features.dim()))
            self.records.append((features.mean(dims), features.var(dims, unbiased=False)))


def _functional_model(template: nn.Module, mode: str) -> nn.Module:
    """A copy of the victim that vmap can run: in train mode BatchNorm uses batch statistics only.

    A client computes its update in train mode, where BatchNorm normalises with the batch's own
    statistics; dropping the running buffers keeps that and avoids in-place buffer updates, which
    vmap forbids. Dropout stays off: the attacker cannot replay the client's random masks.
    """
    model = copy.deepcopy(template)
    model.train(mode == "train")
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
        if mode == "train" and isinstance(module, _BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
    return model


def _stack(dicts: Sequence[dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.stack([d[name] for d in dicts]).to(device) for name in dicts[0]}


def _soft_cross_entropy(logits: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * logits.log_softmax(-1)).sum(-1).mean()


def _local_batches(num_samples: int, batch_size: int) -> list[slice]:
    """The client's mini-batches, in order: the attacker assumes an unshuffled pass over its data."""
    return [slice(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


def _trial_loss(model: nn.Module, plan: Plan, observation: Observation, layer_weights: Sequence[float],
                probe: _BatchNormProbe | None) -> Callable:
    """Loss of one trial: (params, buffers, target, hyper, bn_running, images, label_input) -> (loss, aux)."""
    settings = plan.settings
    steps = observation.local_steps if plan.unroll and observation.kind == "update" else 1
    batches = _local_batches(observation.num_samples, observation.batch_size)

    def training_loss(params, buffers, images, probabilities):
        return _soft_cross_entropy(functional_call(model, (params, buffers), (images,)), probabilities)

    candidate_gradient = grad(training_loss)

    def produced_update(params, buffers, images, probabilities, hyper):
        if steps == 1:
            return candidate_gradient(params, buffers, images, probabilities)
        lr, momentum, weight_decay = hyper[0], hyper[1], hyper[2]
        weights, velocity = params, None
        for step in range(steps):
            batch = batches[step % len(batches)]
            gradient = candidate_gradient(weights, buffers, images[batch], probabilities[batch])
            gradient = {n: g + weight_decay * weights[n] for n, g in gradient.items()}
            velocity = gradient if velocity is None else {n: momentum * velocity[n] + g
                                                          for n, g in gradient.items()}
            weights = {n: w - lr * velocity[n] for n, w in weights.items()}
        return {n: params[n] - weights[n] for n in params}

    def loss(params, buffers, target, hyper, bn_running, images, label_input):
        probabilities = label_input.softmax(-1) if plan.joint_labels else label_input
        produced = produced_update(params, buffers, images, probabilities, hyper)
        matching = gradient_distance(produced, target, layer_weights, settings.objective)
        total = matching
        if settings.tv_weight > 0:
            total = total + settings.tv_weight * total_variation(images)
        if settings.l2_weight > 0:
            total = total + settings.l2_weight * l2_prior(images)
        if settings.bn_weight > 0 and probe is not None:
            probe.records = []
            functional_call(model, (params, buffers), (images,))
            records, probe.records = probe.records, None
            total = total + settings.bn_weight * batchnorm_prior(records, bn_running)
        return total, (total, matching)

    return loss


def optimise(observations: Sequence[Observation], plan: Plan,
             labels: torch.Tensor | None) -> EngineOutput:
    """Optimise candidates for every (observation, restart) of one batch group at once.

    ``labels`` is (O, B) long when labels are fixed (known or recovered); None with joint labels.
    """
    start = time.perf_counter()
    settings, device = plan.settings, plan.device
    first = observations[0]
    count, restarts, batch = len(observations), settings.restarts, first.num_samples
    channels, height, width = first.spec.shape
    num_classes = first.spec.num_classes
    parameter_names = list(first.target)
    layer_weights = settings.layer_weights or (1.0,) * len(parameter_names)
    if len(layer_weights) != len(parameter_names):
        raise ValueError(f"layer_weights has {len(layer_weights)} entries, the model has "
                         f"{len(parameter_names)} parameter tensors")

    model = _functional_model(first.model, settings.model_mode).to(device)
    bn_names = batchnorm_layers(first.model)
    probe = _BatchNormProbe(model, bn_names) if settings.bn_weight > 0 and bn_names else None
    params = _stack([o.weights for o in observations], device)
    buffers = _stack([o.buffers for o in observations], device) if settings.model_mode == "eval" else {}
    use_update = plan.unroll and first.kind == "update"
    target = _stack([o.target if use_update else o.as_gradient() for o in observations], device)
    hyper = torch.tensor([[o.lr, o.momentum, o.weight_decay] for o in observations], device=device)
    bn_running = [(torch.stack([o.buffers[f"{n}.running_mean"] for o in observations]).float().to(device),
                   torch.stack([o.buffers[f"{n}.running_var"] for o in observations]).float().to(device))
                  for n in (bn_names if probe is not None else [])]

    # Seeded per restart on the CPU: a trial starts the same whatever its batch and device.
    images, label_logits = [], []
    for restart in range(restarts):
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + restart)
        images.append(torch.randn((batch, channels, height, width), generator=generator))
        label_logits.append(torch.randn((batch, num_classes), generator=generator))
    candidates = torch.stack(images).unsqueeze(0).repeat(count, 1, 1, 1, 1, 1).to(device)
    variables = [candidates]
    if plan.joint_labels:
        variables.append(torch.stack(label_logits).unsqueeze(0).repeat(count, 1, 1, 1).to(device))
        fixed_labels, label_dim = None, 0
    else:
        if labels is None:
            raise ValueError("labels are needed unless they are optimised jointly")
        fixed_labels, label_dim = nn.functional.one_hot(labels.to(device), num_classes).float(), None

    spec = first.spec
    low = ((0.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)).view(1, 1, 1, -1, 1, 1).to(device)
    high = ((1.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)).view(1, 1, 1, -1, 1, 1).to(device)
    if settings.box:
        variables[0] = torch.maximum(torch.minimum(variables[0], high), low)

    trial = _trial_loss(model, plan, first, layer_weights, probe)
    argnums = (5, 6) if plan.joint_labels else (5,)
    per_restart = vmap(grad(trial, argnums=argnums, has_aux=True),
                       in_dims=(None, None, None, None, None, 0, label_dim))
    batched = vmap(per_restart, in_dims=(0, 0, 0, 0, 0, 0, 0))

    def per_trial(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return mask.view(*mask.shape, *([1] * (like.dim() - 2)))

    def evaluate(current: list[torch.Tensor],
                 alive: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        labels_now = current[1] if plan.joint_labels else fixed_labels
        gradients, (total, matching) = batched(params, buffers, target, hyper, bn_running,
                                               current[0], labels_now)
        gradients = list(gradients)
        if settings.consistency_weight > 0 and restarts > 1:
            # GradInversion's group consistency: pull each restart toward the mean image of the
            # observation's live restarts (a diverged one must not drag its siblings).
            weight = per_trial(alive, current[0]).to(current[0].dtype)
            centre = (current[0] * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1.0)
            offset = current[0] - centre
            elements = offset[0, 0].numel()
            total = total + settings.consistency_weight * offset.pow(2).flatten(2).sum(-1) / elements
            gradients[0] = gradients[0] + settings.consistency_weight * 2.0 * offset / elements
        return gradients, total, matching

    alive = torch.ones((count, restarts), dtype=torch.bool, device=device)
    optimizer = make_optimizer(settings.optimizer, settings.history_size)
    for iteration in range(settings.iterations):
        gradients, total, _ = evaluate(variables, alive)
        finite = torch.isfinite(total)
        for gradient in gradients:
            finite = finite & torch.isfinite(gradient).flatten(2).all(-1)
        alive = alive & finite
        # A diverged trial is frozen with zero gradients: its NaNs never reach another trial's slice.
        gradients = [torch.where(per_trial(alive, g), g, torch.zeros_like(g)) for g in gradients]
        lr = settings.lr * (step_factor(iteration, settings.iterations) if settings.schedule else 1.0)
        stepped = optimizer.step(variables, gradients, lr)
        if settings.box:
            stepped[0] = torch.maximum(torch.minimum(stepped[0], high), low)
        variables = [torch.where(per_trial(alive, new), new, old) for new, old in zip(stepped, variables,
                                                                                       strict=True)]
    _, _, matching = evaluate(variables, alive)
    alive = alive & torch.isfinite(matching)
    for variable in variables:
        alive = alive & torch.isfinite(variable).flatten(2).all(-1)
    if plan.joint_labels:
        final_labels = variables[1].argmax(-1)
    else:
        final_labels = labels.to(device).unsqueeze(1).expand(count, restarts, batch)
    output = EngineOutput(images=variables[0].detach().cpu(), labels=final_labels.cpu(),
                          matching_loss=matching.detach().cpu(), alive=alive.cpu(),
                          seconds=time.perf_counter() - start)
    return output
