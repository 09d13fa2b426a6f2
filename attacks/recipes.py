"""The registered attacks: each a short recipe (objective, priors, optimiser, labels) over the engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from semsim_audit.attacks.config import AttackConfig, AttackResult, TrialStatus
from semsim_audit.attacks.engine import Plan, Progress, optimise
from semsim_audit.attacks.labels import recover_labels
from semsim_audit.attacks.observation import Observation, batch_groups
from semsim_audit.attacks.programs import batchnorm_layers
from semsim_audit.core import select_device

__all__ = ["Attack", "ATTACKS", "run_attack", "run_attacks"]


@dataclass(frozen=True)
class Attack:
    """A recipe: the settings it chooses (an :class:`AttackConfig` with only those set) and its structure."""

    name: str
    description: str
    settings: AttackConfig
    unroll: bool = False            # match the weight delta of unrolled local SGD steps (FedAvg)
    needs_batchnorm: bool = False   # falls back (bn_weight = 0) with a note where the model has none
    references: tuple[str, ...] = field(default=())


ATTACKS: dict[str, Attack] = {attack.name: attack for attack in (
    Attack("dlg", "Deep Leakage from Gradients: L2 matching, images and soft labels jointly by L-BFGS "
           "(strong-Wolfe steps)",
           AttackConfig(objective="l2", optimizer="lbfgs", lr=1.0, labels="joint",
                        line_search="strong-wolfe"),
           references=("Zhu et al., NeurIPS 2019",)),
    Attack("idlg", "iDLG: labels read off the last layer's gradient, then DLG's L2 matching by L-BFGS "
           "(strong-Wolfe steps)",
           AttackConfig(objective="l2", optimizer="lbfgs", lr=1.0, labels="analytic",
                        line_search="strong-wolfe"),
           references=("Zhao et al., 2020",)),
    Attack("inverting-gradients", "Inverting Gradients: 1 - cosine matching + TV, signed Adam, box, schedule",
           AttackConfig(objective="cosine", optimizer="signed-adam", lr=0.1, labels="analytic",
                        tv_weight=1e-2, schedule=True, box=True),
           references=("Geiping et al., NeurIPS 2020",)),
    Attack("gradinversion", "GradInversion: batch labels, L2 matching + TV, L2 and BatchNorm-statistics "
           "priors, seed-group consistency, Adam",
           AttackConfig(objective="l2", optimizer="adam", lr=0.1, labels="batch", tv_weight=1e-4,
                        l2_weight=1e-6, bn_weight=1e-2, consistency_weight=1e-2, schedule=True, box=True),
           needs_batchnorm=True, references=("Yin et al., CVPR 2021",)),
    Attack("fedavg", "FedAvg inversion: unroll the client's local SGD steps at the known lr on the "
           "candidate batch and match the weight delta (cosine + TV, signed Adam)",
           AttackConfig(objective="cosine", optimizer="signed-adam", lr=0.1, labels="analytic",
                        tv_weight=1e-2, schedule=True, box=True),
           unroll=True, references=("Geiping et al., NeurIPS 2020, sec. 5",)),
)}


def _attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def _plan(attack: Attack, config: AttackConfig, first: Observation, notes: list[str]) -> tuple[Plan, str]:
    settings = config.resolve(attack.settings)
    if settings.line_search != "none" and settings.optimizer != "lbfgs":
        raise ValueError(f"line_search={settings.line_search!r} needs optimizer='lbfgs'; "
                         f"{attack.name} runs {settings.optimizer!r}")
    labels = "known" if first.labels is not None else settings.labels
    if settings.bn_weight > 0 and not batchnorm_layers(first.model):
        notes.append("model has no BatchNorm layers: BatchNorm-statistics prior skipped")
        settings = settings.model_copy(update={"bn_weight": 0.0})
    plan = Plan(settings=settings, device=select_device(settings.device), joint_labels=labels == "joint",
                unroll=attack.unroll)
    return plan, labels


def _fixed_labels(observations: Sequence[Observation], method: str) -> torch.Tensor | None:
    if method == "joint":
        return None
    if method == "known":
        return torch.stack([o.labels for o in observations])  # type: ignore[misc]
    return torch.stack([recover_labels(o, method) for o in observations])


def _attack_group(attack: Attack, observations: Sequence[Observation], config: AttackConfig,
                  progress: Progress | None) -> list[AttackResult]:
    notes: list[str] = []
    plan, label_method = _plan(attack, config, observations[0], notes)
    if label_method not in ("known", "joint"):
        notes.append(f"labels recovered analytically ({label_method})")
    if attack.unroll and observations[0].kind == "gradient":
        notes.append("one local step: the update is its gradient, matched directly")
    if not attack.unroll and observations[0].kind == "update":
        notes.append(f"{observations[0].local_steps} local steps read as one averaged gradient")
    output = optimise(observations, plan, _fixed_labels(observations, label_method), progress, notes)
    settings = plan.settings
    results = []
    for index, observation in enumerate(observations):
        losses, alive = output.matching_loss[index], output.alive[index]
        trials = [TrialStatus(restart=r, status="ok" if bool(alive[r]) else "failed",
                              loss=float(losses[r]),
                              reason=None if bool(alive[r]) else "diverged: non-finite loss or images")
                  for r in range(settings.restarts)]
        if not bool(alive.any()):
            results.append(AttackResult(
                attack=attack.name, images=torch.zeros((observation.num_samples, *observation.spec.shape)),
                labels=output.labels[index, 0].clone(), loss=float("nan"), iterations=settings.iterations,
                seconds=output.seconds, evaluations=output.evaluations, status="failed",
                reason=f"all {settings.restarts} restart(s) diverged (non-finite loss)", trials=trials,
                notes=list(notes)))
            continue
        best = int(torch.where(alive, losses, torch.full_like(losses, float("inf"))).argmin())
        images = observation.spec.denormalize(output.images[index, best]).clamp(0.0, 1.0)
        results.append(AttackResult(
            attack=attack.name, images=images.contiguous(), labels=output.labels[index, best].clone(),
            loss=float(losses[best]), iterations=settings.iterations, seconds=output.seconds,
            evaluations=output.evaluations, status="ok", trials=trials, notes=list(notes)))
    return results


def run_attacks(name: str, observations: Sequence[Observation], config: AttackConfig | None = None,
                progress: Progress | None = None) -> list[AttackResult]:
    """Attack every observation, batching those that fit together; results in the input order.

    ``progress(done, total)`` hears how many iterations of all batches are done, every few
    iterations. Raises ValueError for an unknown attack or unusable input; a diverging trial is
    reported in its result (``status``, ``trials``), never raised.
    """
    attack = _attack(name)
    config = config if config is not None else AttackConfig()
    if not isinstance(config, AttackConfig):
        raise ValueError(f"config must be an AttackConfig, got {type(config).__name__}")
    observations = list(observations)
    results: dict[int, AttackResult] = {}
    groups = batch_groups(observations)
    for number, group in enumerate(groups):
        members = [observations[i] for i in group]
        group_progress = None
        if progress is not None:
            def group_progress(done: int, total: int, before: int = number) -> None:
                progress(before * total + done, len(groups) * total)
        results.update(zip(group, _attack_group(attack, members, config, group_progress), strict=True))
    return [results[index] for index in range(len(observations))]


def run_attack(name: str, observation: Observation, config: AttackConfig | None = None,
               progress: Progress | None = None) -> AttackResult:
    """Attack one observation (the batched engine with a batch of one)."""
    return run_attacks(name, [observation], config, progress)[0]
