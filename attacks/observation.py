"""What the honest-but-curious server observes: the shared payload an attack may use, nothing else."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from semsim_audit.core import DataSpec

__all__ = ["Observation", "batch_groups"]

TensorLike = torch.Tensor | np.ndarray


def _as_float_tensor(value: object, name: str, what: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what} for parameter {name!r} is not a tensor: {error}") from None
    if not tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.detach().to("cpu", torch.float32).clone()


def _check_entry(tensor: torch.Tensor, expected: torch.Size, name: str, what: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{what} for parameter {name!r} has shape {tuple(tensor.shape)}, "
                         f"the model expects {tuple(expected)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} for parameter {name!r} contains NaN or inf")


def _check_labels(labels: TensorLike | Sequence[int] | None, num_samples: int,
                  spec: DataSpec) -> torch.Tensor | None:
    if labels is None:
        return None
    tensor = torch.as_tensor(labels).detach().cpu().reshape(-1)
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"labels must be integer class indices, got dtype {tensor.dtype}")
    tensor = tensor.long()
    if tensor.numel() != num_samples:
        raise ValueError(f"labels has {tensor.numel()} entries, num_samples is {num_samples}")
    if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= spec.num_classes):
        raise ValueError(f"labels must lie in [0, {spec.num_classes}), got {tensor.tolist()}")
    return tensor


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _attack_copy(model: nn.Module, weights: Mapping[str, torch.Tensor],
                 buffers: Mapping[str, torch.Tensor]) -> nn.Module:
    """A CPU copy of the architecture that holds the global weights the server sent."""
    template = copy.deepcopy(model).to("cpu")
    with torch.no_grad():
        for name, parameter in template.named_parameters():
            parameter.copy_(weights[name])
            parameter.requires_grad_(False)
        for name, buffer in template.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])
    return template


@dataclass(frozen=True, eq=False)
class Observation:
    """One client's shared payload: model (architecture + global weights), observed update, metadata.

    ``kind`` is ``"gradient"`` when ``target`` is the gradient of the client's loss (FedSGD, or one
    local SGD step turned back into its gradient), ``"update"`` when ``target`` is the weight delta
    ``global - client`` of several local steps. ``labels`` is set only under the ``labels_known``
    threat model. Build one with :meth:`from_gradients` or :meth:`from_update`.
    """

    model: nn.Module
    target: dict[str, torch.Tensor]
    spec: DataSpec
    kind: str = "gradient"
    num_samples: int = 1
    lr: float = 1.0
    local_steps: int = 1
    batch_size: int = 1
    momentum: float = 0.0
    weight_decay: float = 0.0
    labels: torch.Tensor | None = None
    _key: tuple = field(default=(), repr=False)

    @classmethod
    def from_gradients(cls, model: nn.Module, gradients: Sequence[TensorLike] | Mapping[str, TensorLike],
                       spec: DataSpec, num_samples: int = 1,
                       labels: TensorLike | Sequence[int] | None = None) -> Observation:
        """FedSGD: the gradient of the client's mean loss at the model's current weights.

        ``gradients`` is a list in ``model.parameters()`` order or a name -> tensor mapping.
        """
        num_samples = _positive_int(num_samples, "num_samples")
        named = dict(model.named_parameters())
        if isinstance(gradients, Mapping):
            missing = [name for name in named if name not in gradients]
            if missing:
                raise ValueError(f"gradients lack parameter {missing[0]!r} ({len(missing)} missing)")
            unknown = [name for name in gradients if name not in named]
            if unknown:
                raise ValueError(f"gradients name {unknown[0]!r}, which is not a parameter of the model")
            items = [(name, gradients[name]) for name in named]
        else:
            gradients = list(gradients)
            if len(gradients) != len(named):
                raise ValueError(f"gradients has {len(gradients)} tensors, the model has "
                                 f"{len(named)} parameters")
            items = list(zip(named, gradients, strict=True))
        target = {}
        for name, value in items:
            tensor = _as_float_tensor(value, name, "gradient")
            _check_entry(tensor, named[name].shape, name, "gradient")
            target[name] = tensor
        weights = {name: p.detach().cpu().float() for name, p in named.items()}
        buffers = {name: b.detach().cpu() for name, b in model.named_buffers()}
        return cls._build(model, weights, buffers, target, spec, "gradient", num_samples=num_samples,
                          labels=_check_labels(labels, num_samples, spec))

    @classmethod
    def from_update(cls, model: nn.Module, global_state: Mapping[str, TensorLike],
                    client_state: Mapping[str, TensorLike], spec: DataSpec, *, lr: float,
                    local_steps: int = 1, batch_size: int = 1, num_samples: int = 1,
                    momentum: float = 0.0, weight_decay: float = 0.0,
                    labels: TensorLike | Sequence[int] | None = None) -> Observation:
        """FedSGD/FedAvg: the global weights the server sent and the weights the client returned.

        States are name -> tensor (state-dict style); BatchNorm buffers in them are model state, not
        gradients: the global ones are loaded into the model, the client's are ignored. One local step
        of plain SGD is turned back into its exact gradient; several steps keep the weight delta.
        """
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        local_steps = _positive_int(local_steps, "local_steps")
        batch_size = _positive_int(batch_size, "batch_size")
        num_samples = _positive_int(num_samples, "num_samples")
        if not (isinstance(momentum, int | float) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        if not (isinstance(weight_decay, int | float) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
        named = dict(model.named_parameters())
        weights, delta = {}, {}
        for name, parameter in named.items():
            for state, what in ((global_state, "global_state"), (client_state, "client_state")):
                if name not in state:
                    raise ValueError(f"{what} lacks parameter {name!r}")
            before = _as_float_tensor(global_state[name], name, "global_state")
            after = _as_float_tensor(client_state[name], name, "client_state")
            _check_entry(before, parameter.shape, name, "global_state")
            _check_entry(after, parameter.shape, name, "client_state")
            weights[name] = before
            delta[name] = before - after
        buffers = {}
        for name, buffer in model.named_buffers():
            if name in global_state:
                value = torch.as_tensor(global_state[name]).detach().cpu()
                if tuple(value.shape) != tuple(buffer.shape):
                    raise ValueError(f"global_state buffer {name!r} has shape {tuple(value.shape)}, "
                                     f"the model expects {tuple(buffer.shape)}")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise ValueError(f"global_state buffer {name!r} contains NaN or inf")
                buffers[name] = value
        common = dict(num_samples=num_samples, lr=float(lr), local_steps=local_steps,
                      batch_size=batch_size, momentum=float(momentum), weight_decay=float(weight_decay),
                      labels=_check_labels(labels, num_samples, spec))
        if local_steps == 1:
            # One SGD step: w_client = w - lr * (g + wd * w) (a fresh momentum buffer equals g).
            gradient = {name: delta[name] / lr - weight_decay * weights[name] for name in named}
            return cls._build(model, weights, buffers, gradient, spec, "gradient", **common)
        return cls._build(model, weights, buffers, delta, spec, "update", **common)

    @classmethod
    def _build(cls, model: nn.Module, weights: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
               target: dict[str, torch.Tensor], spec: DataSpec, kind: str, **metadata: object) -> Observation:
        template = _attack_copy(model, weights, buffers)
        shapes = tuple((name, tuple(p.shape)) for name, p in template.named_parameters())
        buffer_shapes = tuple((name, tuple(b.shape)) for name, b in template.named_buffers())
        key = (type(template).__qualname__, str(template), shapes, buffer_shapes, spec, kind,
               metadata.get("num_samples"), metadata.get("local_steps"), metadata.get("batch_size"),
               metadata.get("labels") is not None)
        return cls(model=template, target=target, spec=spec, kind=kind, _key=key, **metadata)  # type: ignore[arg-type]

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The global weights (name -> tensor), in parameter order."""
        return {name: p.detach() for name, p in self.model.named_parameters()}

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """Non-parameter model state (e.g. BatchNorm running statistics) of the global model."""
        return {name: b.detach() for name, b in self.model.named_buffers()}

    def as_gradient(self) -> dict[str, torch.Tensor]:
        """The observed gradient; for several local steps, the delta read as one averaged gradient."""
        if self.kind == "gradient":
            return self.target
        scale = 1.0 / (self.lr * self.local_steps)
        return {name: delta * scale for name, delta in self.target.items()}

    def batch_key(self) -> tuple:
        """Observations with equal keys can be attacked together in one batched optimisation."""
        return self._key


def batch_groups(observations: Sequence[Observation]) -> list[list[int]]:
    """Indices of observations grouped by what lets them share one batch (architecture, shapes, metadata)."""
    groups: dict[tuple, list[int]] = {}
    for index, observation in enumerate(observations):
        if not isinstance(observation, Observation):
            raise ValueError(f"observations[{index}] is a {type(observation).__name__}, not an Observation")
        groups.setdefault(observation.batch_key(), []).append(index)
    return list(groups.values())
