"""What to audit and how: the one configuration object of a privacy audit, validated at start.

A bad field fails here, when the strategy is built, with a message that names the field, never
rounds later inside an attack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from semsim_audit.attacks import ATTACKS, AttackConfig
from semsim_audit.core import select_device

Key = TypeVar("Key", int, str)

__all__ = ["AuditConfig", "ThreatModel", "ExecutorKind", "TrainingSource", "RUN_CONFIG_KEYS",
           "CLIENT_RUN_CONFIG_KEYS"]

ThreatModel = Literal["labels_recovered", "labels_known"]
ExecutorKind = Literal["inline", "thread", "ray"]
TrainingSource = Literal["observed", "declared"]

# Flower run-config key -> AuditConfig field. `audit-*` keys are the audit's own; `local-epochs`,
# `batch-size` and `lr` are the ordinary keys of a Flower app (Flower's PyTorch template sets
# `local-epochs`), read so the attack knows the training the server's app asks for when its train
# config does not say it.
RUN_CONFIG_KEYS: dict[str, str] = {
    "audit-attack": "attack",
    "audit-iterations": "iterations",
    "audit-restarts": "restarts",
    "audit-every": "every",
    "audit-clients": "clients",
    "audit-seed": "seed",
    "audit-threat-model": "threat_model",
    "audit-training": "training",
    "audit-executor": "executor",
    "audit-out-dir": "out_dir",
    "audit-save-images": "save_images",
    "audit-semsim-checkpoint": "semsim_checkpoint",
    "audit-device": "device",
    "audit-timeout": "timeout",
    "audit-scoring-timeout": "scoring_timeout",
    "audit-accuracy-key": "accuracy_key",
    "audit-loss-key": "loss_key",
    "local-epochs": "local_epochs",
    "local-steps": "local_steps",
    "batch-size": "local_batch_size",
    "lr": "lr",
}
# Read by audit_mod on the client, not by the server; listed so that from_run_config knows them.
CLIENT_RUN_CONFIG_KEYS = ("audit-export-originals", "audit-max-images", "audit-max-pending")
_ATTACK_KEYS = {"iterations", "restarts"}


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
    # Seconds a client may take to score its reconstructions (the scoring request's timeout).
    scoring_timeout: float = Field(120.0, gt=0)
    # Which local training the attack unrolls: "observed" (what the client's audit record says it
    # ran; a different declaration is named in the audit's note) or "declared" (only what the
    # server declared; a client that trained otherwise is skipped, naming the mismatch).
    training: TrainingSource = "observed"
    # The training the server's app asks for when its train config does not say it (Flower's
    # template sends only `lr` and reads `local-epochs` from the run config on the client).
    local_epochs: int | None = Field(None, ge=1)
    local_steps: int | None = Field(None, ge=1)
    local_batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)

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

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], **overrides: Any) -> AuditConfig:
        """The audit configured by a Flower run config (``context.run_config``); ``overrides`` win.

        Keys are kebab-case (:data:`RUN_CONFIG_KEYS`); keys of the run config that are not the
        audit's are ignored, except an unknown ``audit-*`` key, which is refused (a typo would
        otherwise silently audit with the default). ``audit-every`` and ``audit-clients`` take an
        int or a comma-separated list ("1,3,5"). Raises ValueError naming the key.
        """
        fields: dict[str, Any] = {}
        attack_settings: dict[str, Any] = {}
        for key, value in run_config.items():
            if key not in RUN_CONFIG_KEYS:
                if key.startswith("audit-") and key not in CLIENT_RUN_CONFIG_KEYS:
                    known = ", ".join(sorted([k for k in RUN_CONFIG_KEYS if k.startswith("audit-")]))
                    raise ValueError(f"run config {key!r}: unknown audit key; known: {known}")
                continue
            field = RUN_CONFIG_KEYS[key]
            if field in ("every", "clients"):
                value = _int_or_list(key, value)
            if field in _ATTACK_KEYS:
                attack_settings[field] = value
            else:
                fields[field] = value
        if attack_settings:
            fields["attack_config"] = attack_settings
        fields.update(overrides)
        try:
            return cls(**fields)
        except ValidationError as error:
            first = error.errors()[0]
            location = [str(part) for part in first["loc"]] or [""]
            field = location[-1] if location[0] == "attack_config" and len(location) > 1 else location[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            keys = {v: k for k, v in RUN_CONFIG_KEYS.items()}
            if not field:  # a rule across fields (save_images needs out_dir): name them by their keys
                for name, key in keys.items():
                    message = message.replace(name, repr(key)) if "_" in name else message
                raise ValueError(f"run config: {message}") from None
            name = keys.get(field)
            where = f"run config {name!r}" if name and field not in overrides else f"AuditConfig.{field}"
            raise ValueError(f"{where}: {message} (got {first.get('input')!r})") from None

    def audits_round(self, server_round: int) -> bool:
        """Whether ``server_round`` (1-based) is audited."""
        if isinstance(self.every, int):
            return (server_round - 1) % self.every == 0
        return server_round in self.every

    def choose_clients(self, server_round: int, candidates: Sequence[Key]) -> list[Key]:
        """Who is audited in ``server_round``: with ``clients`` a list, the named node ids among the
        candidates; with an int, that many of them, drawn with this config's seed from the sorted
        candidates. Pass stable keys (what each client reports) and the same seed picks the same
        clients in every run, whatever node ids the run got."""
        if isinstance(self.clients, list):
            wanted = set(self.clients)
            return [c for c in candidates if c in wanted]
        rng = np.random.default_rng([self.seed, server_round])
        ordered = sorted(candidates)
        count = min(self.clients, len(ordered))
        # Choose positions, not ids: node ids are 64-bit unsigned and do not survive numpy arrays.
        return sorted(ordered[int(i)] for i in rng.choice(len(ordered), size=count, replace=False))

    def attack_settings(self) -> AttackConfig:
        """What the attack runs with: ``attack_config``, its seed and device from this config unless set."""
        inherited = {"seed": self.seed, "device": self.device}
        return self.attack_config.model_copy(
            update={k: v for k, v in inherited.items() if k not in self.attack_config.model_fields_set})


def _int_or_list(key: str, value: Any) -> int | list[int]:
    """A run config holds scalars only: a list of rounds or node ids comes as "1,3,5"."""
    if isinstance(value, bool):
        raise ValueError(f"run config {key!r}: expected an int or a comma-separated list of ints, "
                         f"got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            parts = [int(part) for part in value.replace(" ", "").split(",") if part]
        except ValueError:
            parts = []
        if parts:
            return parts[0] if "," not in value else parts
    raise ValueError(f"run config {key!r}: expected an int or a comma-separated list of ints, got {value!r}")
