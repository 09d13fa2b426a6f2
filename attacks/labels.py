"""Analytic label recovery from the last layer's gradient (iDLG for one sample, LLG-style for batches)."""

from __future__ import annotations

import torch

from semsim_audit.attacks.observation import Observation

__all__ = ["last_layer", "idlg_label", "batch_labels", "recover_labels"]


def last_layer(gradient: dict[str, torch.Tensor], num_classes: int) -> tuple[str, str | None]:
    """Names of the final linear layer's weight (classes x features) and bias (or None)."""
    names = list(gradient)
    for index in range(len(names) - 1, -1, -1):
        tensor = gradient[names[index]]
        if tensor.dim() == 2 and tensor.shape[0] == num_classes:
            following = names[index + 1] if index + 1 < len(names) else None
            if following is not None and tuple(gradient[following].shape) == (num_classes,):
                return names[index], following
            return names[index], None
    raise ValueError(f"cannot recover labels: the model has no final linear layer with {num_classes} "
                     "outputs; give the labels (labels_known threat model)")


def idlg_label(gradient: dict[str, torch.Tensor], num_classes: int) -> int:
    """iDLG: with one sample and non-negative features, only the true class's weight row sums below 0."""
    weight_name, _ = last_layer(gradient, num_classes)
    return int(gradient[weight_name].sum(dim=1).argmin())


def batch_labels(gradient: dict[str, torch.Tensor], num_classes: int, batch: int) -> torch.Tensor:
    """Labels of a batch (sorted) from the last layer's gradient, repeated classes allowed.

    A class present in the batch pulls its weight row below zero on the features of its samples
    (GradInversion reads the row minimum); every class with a negative row minimum gets one label.
    Remaining labels go, one at a time, to the class with the most negative bias gradient, which
    each assigned label raises by 1/batch (its share of the mean loss); LLG-style counting.
    """
    weight_name, bias_name = last_layer(gradient, num_classes)
    row_minimum = gradient[weight_name].min(dim=1).values
    present = [int(c) for c in torch.argsort(row_minimum) if row_minimum[c] < 0][:batch]
    if bias_name is not None:
        evidence = gradient[bias_name].clone()
        impact = 1.0 / batch
    else:
        evidence = gradient[weight_name].sum(dim=1)
        negative = evidence.clamp(max=0).sum().abs()
        impact = float(negative) / batch if negative > 0 else 1.0
    for cls in present:
        evidence[cls] += impact
    labels = list(present)
    while len(labels) < batch:
        cls = int(evidence.argmin())
        labels.append(cls)
        evidence[cls] += impact
    return torch.tensor(sorted(labels), dtype=torch.long)


def recover_labels(observation: Observation, method: str) -> torch.Tensor:
    """Labels (num_samples,) for ``analytic`` (iDLG for one sample, else batch), ``idlg`` or ``batch``."""
    gradient = observation.as_gradient()
    num_classes = observation.spec.num_classes
    batch = observation.num_samples
    if method == "idlg" or (method == "analytic" and batch == 1):
        if batch != 1:
            raise ValueError(f"iDLG label recovery needs num_samples == 1, got {batch}; use 'batch'")
        return torch.tensor([idlg_label(gradient, num_classes)], dtype=torch.long)
    if method in ("batch", "analytic"):
        return batch_labels(gradient, num_classes, batch)
    raise ValueError(f"unknown analytic label method {method!r}; use 'analytic', 'idlg' or 'batch'")
