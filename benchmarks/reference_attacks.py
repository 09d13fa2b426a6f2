"""The published implementations our attacks are measured against, on the same case (benchmarks only).

- :func:`dlg_reference`: the DLG authors' recipe, ``torch.optim.LBFGS(lr=1)`` with ``step(closure)``
  called ``steps`` times (torch's default ``max_iter=20`` evaluations each), one image at a time;
  the label read off the last layer (iDLG) or optimised jointly as a soft label (DLG).
- :func:`breaching_attack`: breaching 0.1.2's own attacker with one of its attack configs
  (``invertinggradients``, ``seethroughgradients``, ...), fed our model, gradient and data
  description. breaching is never a dependency of the package: ``pip install breaching==0.1.2
  hydra-core lpips`` in the benchmark's environment; :func:`breaching_available` says whether it is.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from semsim_audit.attacks import Observation
from semsim_audit.attacks.labels import idlg_label

__all__ = ["ReferenceResult", "dlg_reference", "breaching_available", "breaching_attack"]


@dataclass
class ReferenceResult:
    """Reconstructions in model-input space (B, C, H, W), labels, wall seconds, objective evaluations."""

    images: torch.Tensor
    labels: torch.Tensor
    seconds: float
    evaluations: int = 0


def dlg_reference(observation: Observation, *, steps: int = 300, joint_labels: bool = False,
                  seed: int = 0, line_search: str | None = None) -> ReferenceResult:
    """The DLG authors' loop on one observation (batch 1, FedSGD); ``line_search="strong_wolfe"``
    gives torch's own line search instead of the authors' fixed step."""
    model = copy.deepcopy(observation.model).requires_grad_(True)
    target = [observation.target[name] for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn((observation.num_samples, *observation.spec.shape), generator=generator)
    dummy.requires_grad_(True)
    num_classes = observation.spec.num_classes
    if joint_labels:
        label_logits = torch.randn((observation.num_samples, num_classes), generator=generator)
        label_logits.requires_grad_(True)
        variables = [dummy, label_logits]
    else:
        label = idlg_label(observation.as_gradient(), num_classes)
        onehot = nn.functional.one_hot(torch.tensor([label]), num_classes).float()
        variables = [dummy]
    optimizer = torch.optim.LBFGS(variables, lr=1, line_search_fn=line_search)
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        probabilities = label_logits.softmax(-1) if joint_labels else onehot
        loss = -(probabilities * model(dummy).log_softmax(-1)).sum(-1).mean()
        gradient = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        difference = sum(((g - t) ** 2).sum() for g, t in zip(gradient, target, strict=True))
        difference.backward()
        return difference

    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step(closure)
    seconds = time.perf_counter() - start
    labels = label_logits.argmax(-1) if joint_labels else torch.tensor([label])
    return ReferenceResult(dummy.detach(), labels.detach(), seconds, evaluations)


def breaching_available() -> bool:
    return importlib.util.find_spec("breaching") is not None and importlib.util.find_spec("hydra") is not None


def _breaching_config(attack: str, overrides: dict[str, Any]) -> Any:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="breaching.config", version_base="1.1"):
        cfg = compose(config_name="cfg", overrides=[f"attack={attack}"])
    cfg.attack.optim.callback = 10**9  # no progress lines
    for dotted, value in overrides.items():
        node = cfg.attack
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg.attack


def breaching_attack(observation: Observation, *, attack: str = "invertinggradients", iterations: int,
                     seed: int = 0, labels: Sequence[int] | None = None,
                     overrides: dict[str, Any] | None = None) -> ReferenceResult:
    """breaching's attacker on one observation; FedAvg observations go in as breaching's multi-step case."""
    import logging

    import breaching
    from omegaconf import OmegaConf

    logging.getLogger("breaching").setLevel(logging.WARNING)
    config = _breaching_config(attack, {"optim.max_iterations": iterations, **(overrides or {})})
    model = copy.deepcopy(observation.model).requires_grad_(True)
    spec = observation.spec
    metadata = OmegaConf.create({"shape": list(spec.shape), "mean": list(spec.mean), "std": list(spec.std),
                                 "modality": "vision", "classes": spec.num_classes})
    parameters = [p.detach().clone() for p in model.parameters()]
    known = torch.as_tensor(labels) if labels is not None else None
    if observation.kind == "update":
        # breaching unrolls the client's steps itself and matches the client-minus-server difference.
        per_step = observation.batch_size
        batches = [known[(i * per_step) % len(known):(i * per_step) % len(known) + per_step]
                   for i in range(observation.local_steps)] if known is not None else None
        hyper = {"steps": observation.local_steps, "data_per_step": per_step, "lr": observation.lr,
                 "labels": batches}
        gradients = [-observation.target[name] for name, _ in model.named_parameters()]
    else:
        hyper = None
        gradients = [observation.target[name] for name, _ in model.named_parameters()]
    server_payload = [{"parameters": parameters, "buffers": None, "metadata": metadata}]
    shared = [{"gradients": gradients, "buffers": None,
               "metadata": {"num_data_points": observation.num_samples, "labels": known,
                            "local_hyperparams": hyper}}]
    attacker = breaching.attacks.prepare_attack(model, nn.CrossEntropyLoss(), config,
                                                {"dtype": torch.float, "device": torch.device("cpu")})
    torch.manual_seed(seed)
    start = time.perf_counter()
    reconstruction, _ = attacker.reconstruct(server_payload, shared, {}, dryrun=False)
    seconds = time.perf_counter() - start
    labels_out = torch.as_tensor(reconstruction["labels"]).detach()
    return ReferenceResult(reconstruction["data"].detach(), labels_out, seconds, iterations)
