"""Attack settings (built from a plain dict) and the result of one attacked observation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

__all__ = ["AttackConfig", "AttackResult", "TrialStatus", "OBJECTIVES", "OPTIMIZERS", "LABEL_METHODS"]

OBJECTIVES = ("l2", "cosine")
OPTIMIZERS = ("signed-adam", "adam", "lbfgs")
LABEL_METHODS = ("analytic", "idlg", "batch", "joint")
MODEL_MODES = ("train", "eval")


@dataclass
class AttackConfig:
    """Run settings; ``None`` means "the attack recipe's default" (see ``ATTACKS[name].defaults``).

    Build it from a plain dict with ``AttackConfig(**settings)``; an unknown key raises TypeError
    naming it, a bad value raises ValueError naming the field.
    """

    iterations: int = 1000
    restarts: int = 1
    seed: int = 0
    lr: float | None = None
    tv_weight: float | None = None
    l2_weight: float | None = None
    bn_weight: float | None = None
    consistency_weight: float | None = None
    objective: str | None = None
    optimizer: str | None = None
    labels: str | None = None
    layer_weights: tuple[float, ...] | None = None
    schedule: bool | None = None
    box: bool | None = None
    model_mode: str = "train"
    history_size: int = 100
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("iterations", "restarts", "history_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AttackConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"AttackConfig.seed must be a non-negative integer, got {self.seed!r}")
        if self.lr is not None and not (_is_number(self.lr) and self.lr > 0):
            raise ValueError(f"AttackConfig.lr must be a positive number, got {self.lr!r}")
        for name in ("tv_weight", "l2_weight", "bn_weight", "consistency_weight"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value >= 0):
                raise ValueError(f"AttackConfig.{name} must be a non-negative number, got {value!r}")
        choices = (("objective", OBJECTIVES), ("optimizer", OPTIMIZERS), ("labels", LABEL_METHODS))
        for name, allowed in choices:
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"AttackConfig.{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.model_mode not in MODEL_MODES:
            raise ValueError(f"AttackConfig.model_mode must be one of {', '.join(MODEL_MODES)}, "
                             f"got {self.model_mode!r}")
        if self.layer_weights is not None:
            weights = tuple(self.layer_weights)
            if not weights or not all(_is_number(w) and w >= 0 for w in weights):
                raise ValueError("AttackConfig.layer_weights must be non-negative numbers, one per "
                                 f"parameter tensor, got {self.layer_weights!r}")
            self.layer_weights = tuple(float(w) for w in weights)
        if not isinstance(self.device, str):
            raise ValueError(f"AttackConfig.device must be a string such as 'auto', got {self.device!r}")

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TrialStatus:
    """One restart of one observation: ``ok`` or ``failed`` (diverged), with its final matching loss."""

    restart: int
    status: str
    loss: float
    reason: str | None = None


@dataclass
class AttackResult:
    """Reconstruction of one observation: images in [0, 1] pixel space (CPU), labels, outcome.

    A failed result (every restart diverged) is still complete: zero images, ``status="failed"``
    and ``reason`` say what happened. ``seconds`` is the wall time of the batched optimisation that
    produced this result (shared by the observations attacked in the same batch).
    """

    attack: str
    images: torch.Tensor
    labels: torch.Tensor
    loss: float
    iterations: int
    seconds: float
    status: str = "ok"
    reason: str | None = None
    trials: list[TrialStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"
