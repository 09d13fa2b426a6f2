"""What to audit and how: the one configuration object of a privacy audit, validated at start.

A bad field fails here, when the strategy is built, with a message that names the field, never
rounds later inside an attack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from semsim_audit.attacks import ATTACKS, AttackConfig
from semsim_audit.core import select_device

__all__ = ["AuditConfig", "ThreatModel", "ExecutorKind"]

ThreatModel = Literal["labels_recovered", "labels_known"]
ExecutorKind = Literal["inline", "thread", "ray"]


class AuditConfig(BaseModel):
    """Which rounds and clients to attack, with which attack, and where the report goes.

    ``every``: an int N audits rounds 1, 1+N, 1+2N, ... (round 1 always: the untrained model
    leaks most), or an explicit list of rounds. ``clients``: an int picks that many of the
    round's sampled clients (seeded), or a list of node ids audits those when sampled.
    """

    model_config = ConfigDict(extra="forbid")

    attack: str = "inverting-gradients"
    # Only what the user sets; the attack's recipe fills the rest (a dict is accepted too).
    attack_config: AttackConfig = Field(default_factory=AttackConfig)
    every: int | list[int] = 1
    clients: int | list[int] = 1
    seed: int = 0
    threat_model: ThreatModel = "labels_recovered"
    executor: ExecutorKind = "inline"
    # Jobs of one round that fit one batched optimisation go to the attack together.
    batch_jobs: bool = True
    ray_address: str | None = None
    ray_num_cpus: float = Field(1.0, ge=0)
    ray_num_gpus: float | None = Field(None, ge=0)
    out_dir: Path | None = None
    save_images: bool = False
    semsim_checkpoint: str | None = None
    accuracy_key: str = "accuracy"
    loss_key: str = "loss"
    device: str = "auto"
    timeout: float = Field(3600.0, gt=0)

    @field_validator("attack")
    @classmethod
    def _known_attack(cls, value: str) -> str:
        if value not in ATTACKS:
            raise ValueError(f"unknown attack {value!r}; known attacks: {', '.join(sorted(ATTACKS))}")
        return value

    @field_serializer("attack_config")
    def _explicit_attack_settings(self, value: AttackConfig) -> dict[str, Any]:
        # The recipe's choices are not the user's: a dumped config reloads to the same settings.
        return value.explicit()

    @field_validator("every")
    @classmethod
    def _valid_every(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"every must be >= 1 (audit every N-th round), got {value}")
            return value
        if not value or any(r < 1 for r in value):
            raise ValueError(f"every as a list must name rounds >= 1, got {value}")
        return sorted(set(value))

    @field_validator("clients")
    @classmethod
    def _valid_clients(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"clients must be >= 1 (clients audited per round), got {value}")
        if isinstance(value, list) and not value:
            raise ValueError("clients as a list must name at least one node id")
        return value

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        select_device(value)  # raises ValueError naming the device
        return value

    @model_validator(mode="after")
    def _images_need_a_folder(self) -> AuditConfig:
        if self.save_images and self.out_dir is None:
            raise ValueError("save_images=True needs out_dir (the run folder the images go to)")
        if self.executor != "ray" and (self.ray_address is not None):
            raise ValueError("ray_address is only used with executor='ray'")
        return self

    def audits_round(self, server_round: int) -> bool:
        """Whether ``server_round`` (1-based) is audited."""
        if isinstance(self.every, int):
            return (server_round - 1) % self.every == 0
        return server_round in self.every

    def choose_clients(self, server_round: int, node_ids: list[int]) -> list[int]:
        """The sampled nodes audited in ``server_round``: the named ones, or ``clients`` of them (seeded)."""
        if isinstance(self.clients, list):
            wanted = set(self.clients)
            return [node for node in node_ids if node in wanted]
        rng = np.random.default_rng([self.seed, server_round])
        count = min(self.clients, len(node_ids))
        ordered = sorted(node_ids)
        # Choose positions, not ids: node ids are 64-bit unsigned and do not survive numpy arrays.
        return sorted(ordered[int(i)] for i in rng.choice(len(ordered), size=count, replace=False))

    def attack_settings(self) -> AttackConfig:
        """What the attack runs with: ``attack_config``, its seed and device from this config unless set."""
        inherited = {"seed": self.seed, "device": self.device}
        return self.attack_config.model_copy(
            update={k: v for k, v in inherited.items() if k not in self.attack_config.model_fields_set})
