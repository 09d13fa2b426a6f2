"""Attack settings, declared once, and the result of one attacked observation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from semsim_audit.core import select_device

__all__ = ["AttackConfig", "AttackResult", "TrialStatus"]

Count = Annotated[int, Field(strict=True, ge=1)]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class AttackConfig(BaseModel):
    """Every setting of an attack, each declared once, with its type and its check.

    A user sets what they want to change (``AttackConfig(iterations=2000, tv_weight=0.02)``); the
    attack's recipe (``ATTACKS[name].settings``) supplies the rest, and :meth:`resolve` merges the
    two. The engine runs the resolved config, so a setting means the same thing in all three
    places. A bad value or unknown key raises ``pydantic.ValidationError`` (a ValueError) naming
    the field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # How long and from where: the run's budget, its randomness, the device.
    iterations: Count = Field(1000, description="optimisation steps")
    restarts: Count = Field(1, description="independent trials per observation; the best match wins")
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'")
    model_mode: Literal["train", "eval"] = Field(
        "train", description="BatchNorm on batch statistics (train, as the client computed) or running ones")
    history_size: Count = Field(100, description="L-BFGS curvature pairs kept")
    lbfgs_evaluations: Count = Field(
        20, description="most steps in one L-BFGS iteration (torch's max_iter, as in DLG): one evaluation "
                        "each at a fixed step; with a line search at most 5/4 as many evaluations (max_eval)")
    # What a recipe chooses.
    objective: Literal["l2", "cosine"] = Field("l2", description="gradient distance: L2 (DLG) or 1 - cosine")
    optimizer: Literal["signed-adam", "adam", "lbfgs"] = "adam"
    line_search: Literal["none", "strong-wolfe"] = Field(
        "none", description="L-BFGS step length: the fixed lr (DLG) or a strong-Wolfe search per trial")
    lr: float = Field(0.1, gt=0, allow_inf_nan=False)
    labels: Literal["analytic", "idlg", "batch", "joint"] = Field(
        "analytic", description="label recovery; known labels (labels_known threat model) always win")
    tv_weight: Weight = 0.0
    l2_weight: Weight = 0.0
    bn_weight: Weight = Field(0.0, description="BatchNorm-statistics prior (models with BatchNorm)")
    consistency_weight: Weight = Field(0.0, description="pull of each restart to the restarts' mean")
    layer_weights: tuple[Weight, ...] | None = Field(
        None, min_length=1, description="one weight per parameter tensor in the matching loss")
    schedule: bool = Field(False, description="lr x 0.1 at 3/8, 5/8 and 7/8 of the run")
    match_support: bool = Field(
        False, description="compare only the coordinates where the observed update is non-zero: the "
                           "adaptive attack on a pruned (sparsified) update, whose zeros are no evidence")
    box: bool = Field(False, description="keep pixels inside [0, 1] after every step")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        select_device(value)  # raises ValueError naming the device
        return value

    def explicit(self) -> dict[str, Any]:
        """The settings this config sets itself (the others come from a recipe)."""
        return self.model_dump(include=self.model_fields_set)

    def resolve(self, recipe: AttackConfig | Mapping[str, Any]) -> AttackConfig:
        """``recipe``'s settings under the ones this config sets explicitly."""
        base = recipe.explicit() if isinstance(recipe, AttackConfig) else dict(recipe)
        return AttackConfig.model_validate({**base, **self.explicit()})


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
    evaluations: int = 0  # objective evaluations of its batch (an L-BFGS iteration makes up to 20-25)
    status: str = "ok"
    reason: str | None = None
    trials: list[TrialStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"
