"""How one batch of trials is evaluated; a trial is one (observation, restart).

Both programs compute, for every trial, the matching loss between the update its candidate images
would produce and the observed one (plus the priors), and its gradient with respect to the images
(and the labels, when they are optimised):

- :class:`StackedProgram` rebuilds the victim with its trials stacked along the channels: grouped
  convolutions, one linear map per trial, BatchNorm per trial channel. Plain autograd then runs
  all trials as one small network, without a per-operation transform, which is several times
  faster than torch.func on a CPU for the models the literature attacks.
- :class:`VmapProgram` lifts the victim as written with torch.func (grad of grad, vmapped over
  restarts and observations). It serves any model torch.func supports: the engine falls back to
  it when a model has a layer the stacked form does not know, or when the stacked form does not
  reproduce the model's outputs on a probe (checked before every attack).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from semsim_audit.attacks.config import AttackConfig
from semsim_audit.attacks.objectives import batchnorm_prior, gradient_distance, l2_prior, total_variation
from semsim_audit.attacks.observation import Observation

__all__ = ["Evaluation", "Program", "StackedProgram", "VmapProgram", "build_program", "batchnorm_layers"]


@dataclass
class Evaluation:
    """One evaluation of every trial, indexed (observation, restart, ...)."""

    image_grad: torch.Tensor          # (O, R, B, C, H, W)
    label_grad: torch.Tensor | None   # (O, R, B, classes) when labels are optimised
    total: torch.Tensor               # (O, R): matching loss + priors (what is minimised)
    matching: torch.Tensor            # (O, R): matching loss alone (how restarts are compared)


class Program(Protocol):
    name: str

    def evaluate(self, images: torch.Tensor, label_logits: torch.Tensor | None,
                 trials: torch.Tensor | None = None) -> Evaluation:
        """Evaluate every trial, or (when the program can) only the flat trial indices ``trials``.

        The result always has every trial's slot; a trial left out has zeros there, and the caller
        must not read them.
        """
        ...


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that carry running statistics (what a BN prior matches)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, _BatchNorm) and module.running_mean is not None]


def _local_batches(num_samples: int, batch_size: int) -> list[slice]:
    """The client's mini-batches, in order: the attacker assumes an unshuffled pass over its data."""
    return [slice(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


class _Setup:
    """What both programs need of a batch group: stacked weights, targets, labels, priors' references."""

    def __init__(self, observations: Sequence[Observation], settings: AttackConfig, device: torch.device,
                 labels: torch.Tensor | None, joint_labels: bool, unroll: bool) -> None:
        first = observations[0]
        self.first = first
        self.settings = settings
        self.device = device
        self.count, self.restarts = len(observations), settings.restarts
        self.batch = first.num_samples
        self.num_classes = first.spec.num_classes
        self.names = list(first.target)
        self.layer_weights = settings.layer_weights or (1.0,) * len(self.names)
        if len(self.layer_weights) != len(self.names):
            raise ValueError(f"layer_weights has {len(self.layer_weights)} entries, the model has "
                             f"{len(self.names)} parameter tensors")
        self.joint_labels = joint_labels
        self.use_update = unroll and first.kind == "update"
        self.steps = first.local_steps if self.use_update else 1
        self.batches = _local_batches(first.num_samples, first.batch_size)
        self.training = settings.model_mode == "train"

        def stack(dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            return {n: torch.stack([d[n] for d in dicts]).to(device) for n in dicts[0]}

        self.params = stack([o.weights for o in observations])                       # (O, ...)
        self.buffers = stack([o.buffers for o in observations]) if first.buffers else {}
        self.target = stack([o.target if self.use_update else o.as_gradient() for o in observations])
        self.hyper = torch.tensor([[o.lr, o.momentum, o.weight_decay] for o in observations], device=device)
        self.bn_names = batchnorm_layers(first.model) if settings.bn_weight > 0 else []
        self.bn_running = [(self.buffers[f"{n}.running_mean"].float(),
                            self.buffers[f"{n}.running_var"].float()) for n in self.bn_names]
        if joint_labels:
            self.probabilities = None
        else:
            if labels is None:
                raise ValueError("labels are needed unless they are optimised jointly")
            self.probabilities = F.one_hot(labels.to(device), self.num_classes).float()   # (O, B, K)

    def priors(self, images: torch.Tensor) -> torch.Tensor:
        """TV and L2 priors of (T, B, C, H, W) images: (T,)."""
        total = images.new_zeros(images.shape[0])
        if self.settings.tv_weight > 0:
            total = total + self.settings.tv_weight * total_variation(images)
        if self.settings.l2_weight > 0:
            total = total + self.settings.l2_weight * l2_prior(images)
        return total


# ----------------------------------------------------------------------------------------- stacked


class _Stack:
    """The per-trial tensors the stacked layers read during one forward pass."""

    def __init__(self) -> None:
        self.count = 1
        self.weights: dict[str, torch.Tensor] = {}   # name -> (T, *shape)
        self.buffers: dict[str, torch.Tensor] = {}
        self.records: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # Whether the running backward pass wants the gradient of the leaf weights: the pass that
        # produces the trials' gradients does; the one that differentiates the matching loss with
        # respect to the images does not (an autograd.Function cannot see which outputs are wanted).
        self.leaf_grads = True


class _Unsupported(Exception):
    """The model has something the stacked form cannot express."""


_convolution_backward = torch.ops.aten.convolution_backward
_NARROW = 12   # input channels a group up to which a model's stacked convolutions take _GroupedConv


@dataclass(frozen=True)
class _ConvShape:
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    def backward(self, grad_output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor,
                 mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _convolution_backward(grad_output, inputs, weight, None, self.stride, self.padding,
                                     self.dilation, False, [0, 0], self.groups, mask)


class _ConvInputGrad(torch.autograd.Function):
    """The input gradient of a convolution, differentiable in the output gradient (and a non-leaf weight)."""

    @staticmethod
    def forward(ctx, grad_output, inputs, weight, shape):  # type: ignore[override]
        ctx.save_for_backward(grad_output, inputs, weight)
        ctx.shape = shape
        return shape.backward(grad_output, inputs, weight, [True, False, False])[0]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        grad_output, inputs, weight = ctx.saved_tensors
        shape = ctx.shape
        to_output = (F.conv2d(grad, weight, None, shape.stride, shape.padding, shape.dilation, shape.groups)
                     if ctx.needs_input_grad[0] else None)
        to_weight = (shape.backward(grad_output, grad, weight, [False, True, False])[1]
                     if ctx.needs_input_grad[2] else None)
        return to_output, None, to_weight, None


class _ConvWeightGrad(torch.autograd.Function):
    """The weight gradient of a convolution, differentiable in the output gradient and the input."""

    @staticmethod
    def forward(ctx, grad_output, inputs, weight, shape):  # type: ignore[override]
        ctx.save_for_backward(grad_output, inputs, weight)
        ctx.shape = shape
        return shape.backward(grad_output, inputs, weight, [False, True, False])[1]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        grad_output, inputs, _ = ctx.saved_tensors
        shape = ctx.shape
        to_output = (F.conv2d(inputs, grad, None, shape.stride, shape.padding, shape.dilation, shape.groups)
                     if ctx.needs_input_grad[0] else None)
        to_input = (shape.backward(grad_output, inputs, grad, [True, False, False])[0]
                    if ctx.needs_input_grad[1] else None)
        return to_output, to_input, None, None


class _GroupedConv(torch.autograd.Function):
    """``F.conv2d`` whose backward is itself differentiable without torch's grouped double backward.

    torch differentiates a convolution's backward in one function that always computes the weight
    term of the input gradient, one group at a time: with every trial a group, that is a
    convolution per trial and layer in each evaluation, for a term the attack never reads when the
    weights are leaves (the attack differentiates the second time with respect to the images only).
    Here the two halves of the backward are separate functions, and the input gradient leaves a
    leaf weight out of its graph; a weight computed from the images (FedAvg's unrolled steps) stays in.
    """

    @staticmethod
    def forward(ctx, inputs, weight, shape, stack, leaf):  # type: ignore[override]
        ctx.save_for_backward(inputs, weight)
        ctx.shape, ctx.stack, ctx.leaf = shape, stack, leaf
        return F.conv2d(inputs, weight, None, shape.stride, shape.padding, shape.dilation, shape.groups)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        inputs, weight = ctx.saved_tensors
        shape = ctx.shape
        to_input = to_weight = None
        if ctx.needs_input_grad[0]:
            kept = weight.detach() if ctx.leaf else weight
            to_input = _ConvInputGrad.apply(grad_output, inputs.detach(), kept, shape)
        if ctx.needs_input_grad[1] and (ctx.stack.leaf_grads or not ctx.leaf):
            to_weight = _ConvWeightGrad.apply(grad_output, inputs, weight.detach(), shape)
        return to_input, to_weight, None, None, None


def _explicit_padding(conv: nn.Conv2d) -> list[int]:
    """The convolution's padding as numbers ('valid', and 'same' where it pads both sides alike)."""
    if conv.padding == "valid":
        return [0, 0]
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise _Unsupported("a convolution whose 'same' padding differs between sides")
        return [t // 2 for t in total]
    return list(conv.padding)


class _StackedConv2d(nn.Module):
    """A convolution per trial, the trials stacked along the channels (one grouped convolution).

    In a model whose convolutions are all narrow (at most :data:`_NARROW` input channels a group,
    as in the LeNets of the DLG literature) they take :class:`_GroupedConv` (on any device), on
    channels-last tensors on a CPU: measured on a 2-core CPU, 1.2-1.6x the throughput of plain
    autograd on the LeNet from K=1 to K=64. With wider layers (a ConvNet of width 16, ResNet-18)
    that was slower on the CPU, also when only the narrow first layer took it: their convolutions
    keep ``F.conv2d``.
    """

    def __init__(self, conv: nn.Conv2d, prefix: str, stack: _Stack) -> None:
        super().__init__()
        self.stride, self.dilation = list(conv.stride), list(conv.dilation)
        self.padding = _explicit_padding(conv)
        self.groups = conv.groups
        self.in_channels_per_group = conv.in_channels // conv.groups
        self.narrow = False   # set by _stacked_model, for all convolutions of the model at once
        self.weight = prefix + "weight"
        self.bias = prefix + "bias" if conv.bias is not None else None
        self.stack = stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.stack.weights[self.weight]
        leaf = weight.is_leaf
        weight = weight.reshape(-1, *weight.shape[2:])
        shape = _ConvShape(self.stride, self.padding, self.dilation, self.groups * self.stack.count)
        if not self.narrow:
            out = F.conv2d(x, weight, None, shape.stride, shape.padding, shape.dilation, shape.groups)
        else:
            if x.device.type == "cpu":  # oneDNN's kernels for few channels a group prefer channels-last
                x = x.contiguous(memory_format=torch.channels_last)
                weight = weight.contiguous(memory_format=torch.channels_last)
            out = _GroupedConv.apply(x, weight, shape, self.stack, leaf)
        if self.bias is not None:
            out = out + self.stack.weights[self.bias].reshape(1, -1, 1, 1)
        return out


class _StackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, prefix: str, stack: _Stack) -> None:
        super().__init__()
        self.weight = prefix + "weight"
        self.bias = prefix + "bias" if linear.bias is not None else None
        self.stack = stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise _Unsupported("a linear layer on more than (batch, features)")
        count = self.stack.count
        out = torch.einsum("bti,toi->bto", x.reshape(x.shape[0], count, -1), self.stack.weights[self.weight])
        if self.bias is not None:
            out = out + self.stack.weights[self.bias]
        return out.reshape(x.shape[0], -1)


class _StackedBatchNorm(nn.Module):
    def __init__(self, norm: _BatchNorm, prefix: str, stack: _Stack, training: bool) -> None:
        super().__init__()
        self.weight = prefix + "weight" if norm.affine else None
        self.bias = prefix + "bias" if norm.affine else None
        self.running = (prefix + "running_mean", prefix + "running_var")
        self.eps, self.training_stats, self.stack = norm.eps, training, stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = self.stack.count
        if self.stack.records is not None:  # GradInversion's prior reads each BN input's batch statistics
            dims = [0, *range(2, x.dim())]
            self.stack.records.append((x.mean(dims).reshape(count, -1),
                                       x.var(dims, unbiased=False).reshape(count, -1)))
        weight = self.stack.weights[self.weight].reshape(-1) if self.weight else None
        bias = self.stack.weights[self.bias].reshape(-1) if self.bias else None
        if self.training_stats:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        mean, var = (self.stack.buffers[name].reshape(-1) for name in self.running)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)


# Layers without weights that act on each channel (or each element) alone: stacking keeps them exact.
_CHANNELWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus,
    nn.Hardtanh, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.modules.dropout._DropoutNd,
)


def _stacked_model(template: nn.Module, stack: _Stack, training: bool) -> nn.Module:
    """A copy of ``template`` whose layers read per-trial weights from ``stack``; raises _Unsupported."""
    model = copy.deepcopy(template).eval()  # dropout off: the attacker cannot replay the client's masks
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            prefix = f"{parent_name}.{name}." if parent_name else f"{name}."
            if type(child) is nn.Conv2d and child.padding_mode == "zeros":
                setattr(parent, name, _StackedConv2d(child, prefix, stack))
            elif type(child) is nn.Linear:
                setattr(parent, name, _StackedLinear(child, prefix, stack))
            elif type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
                setattr(parent, name, _StackedBatchNorm(child, prefix, stack, training))
            elif type(child) is nn.Flatten and child.start_dim != 1:
                raise _Unsupported("a Flatten that does not start at dimension 1")
            elif not list(child.children()) and not isinstance(child, _CHANNELWISE + (nn.Flatten,)):
                raise _Unsupported(f"layer {type(child).__name__}")
    if next(model.parameters(), None) is not None:
        raise _Unsupported("parameters outside convolution, linear and BatchNorm layers")
    convolutions = [m for m in model.modules() if isinstance(m, _StackedConv2d)]
    narrow = all(m.in_channels_per_group <= _NARROW for m in convolutions)
    for convolution in convolutions:  # all or none: switching memory formats between layers costs more
        convolution.narrow = narrow
    return model


@dataclass
class _Trials:
    """Per-trial tensors of the stacked program, trial = observation * restarts + restart."""

    weights: dict[str, torch.Tensor]          # leaves: the produced gradient is taken with respect to them
    buffers: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor]
    lr: torch.Tensor
    momentum: torch.Tensor
    weight_decay: torch.Tensor
    bn_running: list[tuple[torch.Tensor, torch.Tensor]]
    probabilities: torch.Tensor | None

    def select(self, index: torch.Tensor) -> _Trials:
        """The same tensors for the trials ``index`` only (fresh leaves for the weights)."""
        return _Trials(weights={n: w.detach()[index].requires_grad_(True) for n, w in self.weights.items()},
                       buffers={n: b[index] for n, b in self.buffers.items()},
                       target={n: t[index] for n, t in self.target.items()},
                       lr=self.lr[index], momentum=self.momentum[index],
                       weight_decay=self.weight_decay[index],
                       bn_running=[(m[index], v[index]) for m, v in self.bn_running],
                       probabilities=self.probabilities[index] if self.probabilities is not None else None)


class StackedProgram:
    """All trials as one grouped-channel network, differentiated twice by plain autograd.

    ``evaluate`` can leave out trials (an L-BFGS trial that stopped for this iteration): the network
    is then stacked over the remaining trials only, so their evaluation costs what they need.
    """

    name = "stacked"

    def __init__(self, setup: _Setup, functional: nn.Module) -> None:
        self.setup = setup
        self.stack = _Stack()
        self.model = _stacked_model(functional, self.stack, setup.training).to(setup.device)
        restarts, trials = setup.restarts, setup.count * setup.restarts
        self.trials = trials

        def per_trial(tensor: torch.Tensor) -> torch.Tensor:  # (O, ...) -> (T, ...), trial = o * R + r
            return tensor.repeat_interleave(restarts, dim=0)

        lr, momentum, weight_decay = (per_trial(setup.hyper[:, i]) for i in range(3))
        self.all = _Trials(
            weights={n: per_trial(p).detach().requires_grad_(True) for n, p in setup.params.items()},
            buffers={n: per_trial(b) for n, b in setup.buffers.items()},
            target={n: per_trial(t) for n, t in setup.target.items()},
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            bn_running=[(per_trial(m), per_trial(v)) for m, v in setup.bn_running],
            probabilities=per_trial(setup.probabilities) if setup.probabilities is not None else None)
        self.check(functional)
        # One trial alone (the slow tail of an L-BFGS run, or an attack on one update) runs on the
        # model as written, its weights copied in: the grouped form only costs there.
        self.plain: dict[str, nn.Parameter] | None = None
        if setup.steps == 1 and not setup.bn_running:
            self.single = copy.deepcopy(functional)
            self.plain = {n: q.requires_grad_(True) for n, q in self.single.named_parameters()}
            self.plain_buffers = dict(self.single.named_buffers())
            self.loaded: int | None = None   # the trial whose weights the plain copy holds

    def _logits(self, weights: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                images: torch.Tensor) -> torch.Tensor:
        """(T, b, C, H, W) images -> (T, b, classes) logits, each trial through its own weights."""
        trials, batch = images.shape[:2]
        self.stack.count, self.stack.weights, self.stack.buffers = trials, weights, buffers
        stacked = images.transpose(0, 1).reshape(batch, trials * images.shape[2], *images.shape[3:])
        return self.model(stacked).reshape(batch, trials, -1).transpose(0, 1)

    def check(self, functional: nn.Module) -> None:
        """Raise _Unsupported unless the stacked form gives the model's own outputs (two distinct trials)."""
        setup = self.setup
        first = {n: p[:1] for n, p in self.all.weights.items()}
        probe_weights = {n: torch.cat([p.detach(), p.detach() * 0.5 + 0.01]) for n, p in first.items()}
        probe_buffers = {n: b[:1].repeat(2, *([1] * (b.dim() - 1))) for n, b in self.all.buffers.items()}
        generator = torch.Generator().manual_seed(0)
        images = torch.randn((2, max(setup.batch, 2), *setup.first.spec.shape), generator=generator)
        images = images.to(setup.device)
        try:
            with torch.no_grad():
                stacked = self._logits(probe_weights, probe_buffers, images)
                for trial in range(2):
                    state = {**{n: p[trial] for n, p in probe_weights.items()},
                             **{n: b[trial] for n, b in probe_buffers.items()}}
                    expected = functional_call(functional, state, (images[trial],))
                    scale = float(expected.abs().max()) + 1e-6
                    if not torch.allclose(stacked[trial], expected, rtol=1e-4, atol=1e-5 * scale):
                        raise _Unsupported("the stacked form does not reproduce the model's outputs")
        except _Unsupported:
            raise
        except Exception as error:  # a forward that stacking breaks (a reshape to a fixed size, ...)
            raise _Unsupported(f"{type(error).__name__}: {error}") from None

    def _loss(self, weights: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], images: torch.Tensor,
              probabilities: torch.Tensor) -> torch.Tensor:
        logits = self._logits(weights, buffers, images)
        return -(probabilities * logits.log_softmax(-1)).sum(-1).mean(-1).sum()

    def _produced(self, trials: _Trials, images: torch.Tensor,
                  probabilities: torch.Tensor) -> dict[str, torch.Tensor]:
        setup, names = self.setup, self.setup.names
        if setup.steps == 1:
            grads = torch.autograd.grad(self._loss(trials.weights, trials.buffers, images, probabilities),
                                        [trials.weights[n] for n in names], create_graph=True)
            return dict(zip(names, grads, strict=True))
        weights, velocity = dict(trials.weights), None

        def per_trial(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return value.view(-1, *([1] * (like.dim() - 1)))

        for step in range(setup.steps):
            batch = setup.batches[step % len(setup.batches)]
            grads = torch.autograd.grad(self._loss(weights, trials.buffers, images[:, batch],
                                                   probabilities[:, batch]),
                                        [weights[n] for n in names], create_graph=True)
            step_grads = {n: g + per_trial(trials.weight_decay, g) * weights[n]
                          for n, g in zip(names, grads, strict=True)}
            velocity = step_grads if velocity is None else {
                n: per_trial(trials.momentum, g) * velocity[n] + g for n, g in step_grads.items()}
            weights = {n: w - per_trial(trials.lr, w) * velocity[n] for n, w in weights.items()}
        return {n: trials.weights[n] - weights[n] for n in names}

    def _evaluate_one(self, trial: int, images: torch.Tensor, label_logits: torch.Tensor | None
                      ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Gradients, total and matching (each with a leading 1) of the one trial ``trial``."""
        setup = self.setup
        assert self.plain is not None
        if self.loaded != trial:  # a trial's weights never change: copy them in once per switch
            with torch.no_grad():
                for name, parameter in self.plain.items():
                    parameter.copy_(self.all.weights[name][trial])
                for name, buffer in self.plain_buffers.items():
                    buffer.copy_(self.all.buffers[name][trial])
            self.loaded = trial
        candidate = images.detach()[trial].requires_grad_(True)          # (B, C, H, W)
        inputs = [candidate]
        if setup.joint_labels:
            assert label_logits is not None
            logits = label_logits.detach()[trial].requires_grad_(True)
            inputs.append(logits)
            probabilities = logits.softmax(-1)
        else:
            assert self.all.probabilities is not None
            probabilities = self.all.probabilities[trial]
        names = setup.names
        with torch.enable_grad():
            loss = _soft_cross_entropy(self.single(candidate), probabilities)
            grads = torch.autograd.grad(loss, [self.plain[n] for n in names], create_graph=True)
            produced = {n: g.unsqueeze(0) for n, g in zip(names, grads, strict=True)}
            target = {n: self.all.target[n][trial:trial + 1] for n in names}
            matching = gradient_distance(produced, target, setup.layer_weights, setup.settings.objective,
                                         setup.settings.match_support)
            total = matching + setup.priors(candidate.unsqueeze(0))
            gradients = [g.detach().unsqueeze(0) for g in torch.autograd.grad(total.sum(), inputs)]
        return gradients, total.detach(), matching.detach()

    def evaluate(self, images: torch.Tensor, label_logits: torch.Tensor | None,
                 trials: torch.Tensor | None = None) -> Evaluation:
        setup = self.setup
        count, restarts = images.shape[:2]
        if trials is not None and trials.numel() == 1:
            single: int | None = int(trials[0])
        else:
            single = 0 if self.trials == 1 else None
        if single is not None and self.plain is not None:
            flat_logits = (label_logits.reshape(self.trials, *label_logits.shape[2:])
                           if label_logits is not None else None)
            grads, total, matching = self._evaluate_one(
                single, images.reshape(self.trials, *images.shape[2:]), flat_logits)
            return self._spread(images, label_logits, grads, total, matching,
                                torch.tensor([single], device=images.device))
        flat_images = images.detach().reshape(self.trials, *images.shape[2:])
        flat_logits = (label_logits.detach().reshape(self.trials, *label_logits.shape[2:])
                       if label_logits is not None else None)
        subset = trials is not None and trials.numel() < self.trials
        chosen = self.all.select(trials) if subset else self.all
        if subset:
            flat_images = flat_images[trials]
            flat_logits = flat_logits[trials] if flat_logits is not None else None
        candidates = flat_images.requires_grad_(True)
        inputs = [candidates]
        if setup.joint_labels:
            assert flat_logits is not None
            logits = flat_logits.requires_grad_(True)
            inputs.append(logits)
            probabilities = logits.softmax(-1)
        else:
            assert chosen.probabilities is not None
            probabilities = chosen.probabilities
        with torch.enable_grad():
            produced = self._produced(chosen, candidates, probabilities)
            matching = gradient_distance(produced, chosen.target, setup.layer_weights,
                                         setup.settings.objective, setup.settings.match_support)
            total = matching + setup.priors(candidates)
            if chosen.bn_running:
                self.stack.records = []
                self._logits(chosen.weights, chosen.buffers, candidates)
                records, self.stack.records = self.stack.records, None
                total = total + setup.settings.bn_weight * batchnorm_prior(records, chosen.bn_running)
            self.stack.leaf_grads = False
            try:
                grads = [g.detach() for g in torch.autograd.grad(total.sum(), inputs)]
            finally:
                self.stack.leaf_grads = True
        return self._spread(images, label_logits, grads, total.detach(), matching.detach(),
                            trials if subset else None)

    def _spread(self, images: torch.Tensor, label_logits: torch.Tensor | None, grads: list[torch.Tensor],
                total: torch.Tensor, matching: torch.Tensor, trials: torch.Tensor | None) -> Evaluation:
        """The evaluated trials' results in every trial's slot (zeros for those left out)."""
        setup = self.setup
        count, restarts = images.shape[:2]
        if trials is not None and len(trials) < self.trials:

            def spread(values: torch.Tensor) -> torch.Tensor:
                full = values.new_zeros((self.trials, *values.shape[1:]))
                full[trials] = values
                return full

            grads, total, matching = [spread(g) for g in grads], spread(total), spread(matching)
        label_grad = None
        if setup.joint_labels and label_logits is not None:
            label_grad = grads[1].reshape(label_logits.shape)
        return Evaluation(image_grad=grads[0].reshape(images.shape), label_grad=label_grad,
                          total=total.reshape(count, restarts), matching=matching.reshape(count, restarts))


# ----------------------------------------------------------------------------------------- vmap


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
            self.records.append((features.mean(dims).unsqueeze(0),
                                 features.var(dims, unbiased=False).unsqueeze(0)))


def _soft_cross_entropy(logits: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * logits.log_softmax(-1)).sum(-1).mean()


class VmapProgram:
    """The victim as written, lifted with torch.func: grad of grad, vmapped over restarts and observations."""

    name = "vmap"

    def __init__(self, setup: _Setup, functional: nn.Module) -> None:
        self.setup = setup
        settings = setup.settings
        probe = _BatchNormProbe(functional, setup.bn_names) if setup.bn_names else None
        buffers = setup.buffers if not setup.training else {}
        batches, steps = setup.batches, setup.steps

        def training_loss(params, buffers, images, probabilities):
            logits = functional_call(functional, (params, buffers), (images,))
            return _soft_cross_entropy(logits, probabilities)

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
            probabilities = label_input.softmax(-1) if setup.joint_labels else label_input
            produced = produced_update(params, buffers, images, probabilities, hyper)
            one = {n: t.unsqueeze(0) for n, t in produced.items()}
            matching = gradient_distance(one, {n: t.unsqueeze(0) for n, t in target.items()},
                                         setup.layer_weights, settings.objective, settings.match_support)[0]
            total = matching + setup.priors(images.unsqueeze(0))[0]
            if probe is not None:
                probe.records = []
                functional_call(functional, (params, buffers), (images,))
                records, probe.records = probe.records, None
                running = [(m.unsqueeze(0), v.unsqueeze(0)) for m, v in bn_running]
                total = total + settings.bn_weight * batchnorm_prior(records, running)[0]
            return total, (total, matching)

        label_dim = 0 if setup.joint_labels else None
        argnums = (5, 6) if setup.joint_labels else (5,)
        per_restart = vmap(grad(loss, argnums=argnums, has_aux=True),
                           in_dims=(None, None, None, None, None, 0, label_dim))
        self._batched = vmap(per_restart, in_dims=(0, 0, 0, 0, 0, 0, 0))
        self._buffers = buffers

    def evaluate(self, images: torch.Tensor, label_logits: torch.Tensor | None,
                 trials: torch.Tensor | None = None) -> Evaluation:
        """Every trial, always: vmap has no cheaper form for a subset (``trials`` is a hint only)."""
        setup = self.setup
        labels = label_logits if setup.joint_labels else setup.probabilities
        grads, (total, matching) = self._batched(setup.params, self._buffers, setup.target, setup.hyper,
                                                 setup.bn_running, images, labels)
        return Evaluation(image_grad=grads[0], label_grad=grads[1] if setup.joint_labels else None,
                          total=total, matching=matching)


# ----------------------------------------------------------------------------------------- choice


def functional_model(template: nn.Module, mode: str) -> nn.Module:
    """A copy of the victim both programs can run: in train mode BatchNorm uses batch statistics only.

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


def build_program(observations: Sequence[Observation], settings: AttackConfig, device: torch.device,
                  labels: torch.Tensor | None, *, joint_labels: bool, unroll: bool,
                  note: Callable[[str], None] = lambda _: None) -> Program:
    """The stacked program where it reproduces the model, else the torch.func one (with a note why)."""
    setup = _Setup(observations, settings, device, labels, joint_labels, unroll)
    functional = functional_model(observations[0].model, settings.model_mode).to(device)
    try:
        return StackedProgram(setup, functional)
    except _Unsupported as reason:
        note(f"evaluated with torch.func (slower): the batched form does not support {reason}")
        return VmapProgram(setup, functional)
