"""The one engine: candidate images of (observations x restarts) optimised together.

A program (:mod:`semsim_audit.attacks.programs`) evaluates every trial's matching loss and its
gradient with respect to the candidates; an optimiser (:mod:`semsim_audit.attacks.optimizers`)
steps all trials at once, each with its own state. A trial that produces NaN or inf is frozen and
reported; the best candidate each trial has seen (lowest objective) is what it returns, not its
last iterate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from semsim_audit.attacks.config import AttackConfig
from semsim_audit.attacks.observation import Observation
from semsim_audit.attacks.optimizers import Evaluated, make_optimizer, step_factor
from semsim_audit.attacks.programs import build_program

__all__ = ["Plan", "EngineOutput", "optimise", "Progress"]

# progress(iterations done, iterations in all): called every few iterations and at the end.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Plan:
    """One batched optimisation: the resolved settings and what follows from the recipe and the data."""

    settings: AttackConfig
    device: torch.device
    joint_labels: bool   # labels are optimised with the images (DLG) instead of fixed
    unroll: bool         # match the weight delta of unrolled local steps (FedAvg)


@dataclass
class EngineOutput:
    """Best candidates of every trial, on the CPU, indexed (observation, restart, ...)."""

    images: torch.Tensor          # (O, R, B, C, H, W), normalised model-input space
    labels: torch.Tensor          # (O, R, B) long
    matching_loss: torch.Tensor   # (O, R), gradient-matching loss of the returned images
    alive: torch.Tensor           # (O, R) bool: False where the trial produced NaN/inf
    seconds: float
    evaluations: int              # objective evaluations of the batch (L-BFGS makes several a step)
    program: str                  # "stacked" or "vmap"


class _Best:
    """The lowest-objective candidate each trial has seen, and its matching loss."""

    def __init__(self, variables: list[torch.Tensor]) -> None:
        lead = variables[0].shape[:2]
        self.total = torch.full(lead, float("inf"), device=variables[0].device)
        self.matching = torch.full(lead, float("nan"), device=variables[0].device)
        self.variables = [v.clone() for v in variables]

    def update(self, variables: list[torch.Tensor], total: torch.Tensor, matching: torch.Tensor,
               alive: torch.Tensor) -> None:
        better = alive & (total < self.total)
        self.total = torch.where(better, total, self.total)
        self.matching = torch.where(better, matching, self.matching)
        self.variables = [torch.where(_per_trial(better, v), v, b) for v, b in zip(variables, self.variables,
                                                                                   strict=True)]


def _per_trial(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(*mask.shape, *([1] * (like.dim() - 2)))


def _initial(observations: Sequence[Observation], settings: AttackConfig,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates (O, R, B, C, H, W) and label logits (O, R, B, K), seeded per restart on the CPU.

    A trial starts from the same point whatever its batch and device.
    """
    first = observations[0]
    images, label_logits = [], []
    for restart in range(settings.restarts):
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + restart)
        images.append(torch.randn((first.num_samples, *first.spec.shape), generator=generator))
        label_logits.append(torch.randn((first.num_samples, first.spec.num_classes), generator=generator))
    count = len(observations)
    return (torch.stack(images).unsqueeze(0).repeat(count, 1, 1, 1, 1, 1).to(device),
            torch.stack(label_logits).unsqueeze(0).repeat(count, 1, 1, 1).to(device))


def optimise(observations: Sequence[Observation], plan: Plan, labels: torch.Tensor | None,
             progress: Progress | None = None, notes: list[str] | None = None) -> EngineOutput:
    """Optimise candidates for every (observation, restart) of one batch group at once.

    ``labels`` is (O, B) long when labels are fixed (known or recovered); None with joint labels.
    """
    start = time.perf_counter()
    settings, device = plan.settings, plan.device
    restarts = settings.restarts
    program = build_program(observations, settings, device, labels, joint_labels=plan.joint_labels,
                            unroll=plan.unroll, note=(notes.append if notes is not None else lambda _: None))
    images, label_logits = _initial(observations, settings, device)
    spec = observations[0].spec
    low = ((0.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)).view(1, 1, 1, -1, 1, 1).to(device)
    high = ((1.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)).view(1, 1, 1, -1, 1, 1).to(device)

    def project(variables: list[torch.Tensor]) -> list[torch.Tensor]:
        if settings.box:
            variables = [torch.maximum(torch.minimum(variables[0], high), low), *variables[1:]]
        return variables

    variables = project([images, label_logits] if plan.joint_labels else [images])
    alive = torch.ones(images.shape[:2], dtype=torch.bool, device=device)
    best = _Best(variables)
    evaluations = 0

    def evaluate(current: list[torch.Tensor], wanted: torch.Tensor | None = None) -> Evaluated:
        """Evaluate the trials ``wanted`` ((O, R) bool; None = all); the others keep their last state."""
        nonlocal alive, evaluations
        evaluations += 1
        trials = wanted.reshape(-1).nonzero().squeeze(1) if wanted is not None else None
        result = program.evaluate(current[0], current[1] if plan.joint_labels else None, trials)
        gradients = [result.image_grad] + ([result.label_grad] if plan.joint_labels else [])
        total = result.total
        if settings.consistency_weight > 0 and restarts > 1:
            # GradInversion's group consistency: pull each restart toward the mean image of the
            # observation's live restarts (a diverged one must not drag its siblings).
            weight = _per_trial(alive, current[0]).to(current[0].dtype)
            centre = (current[0] * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1.0)
            offset = current[0] - centre
            elements = offset[0, 0].numel()
            total = total + settings.consistency_weight * offset.pow(2).flatten(2).sum(-1) / elements
            gradients[0] = gradients[0] + settings.consistency_weight * 2.0 * offset / elements
        finite = torch.isfinite(total)
        for gradient in gradients:
            finite = finite & torch.isfinite(gradient).flatten(2).all(-1)
        if wanted is not None:  # a trial left out did not move since its last evaluation
            finite = finite | ~wanted
        alive = alive & finite
        best.update(current, total, result.matching, alive if wanted is None else alive & wanted)
        # A diverged trial is frozen with zero gradients: its NaNs never reach another trial's slice.
        gradients = [torch.where(_per_trial(alive, g), g, torch.zeros_like(g)) for g in gradients]
        return Evaluated(gradients, torch.where(alive, total, torch.zeros_like(total)), alive)

    optimizer = make_optimizer(settings)
    every = max(1, settings.iterations // 20)
    for iteration in range(settings.iterations):
        lr = settings.lr * (step_factor(iteration, settings.iterations) if settings.schedule else 1.0)
        variables = optimizer.iterate(variables, evaluate, lr, project)
        if progress is not None and ((iteration + 1) % every == 0 or iteration + 1 == settings.iterations):
            progress(iteration + 1, settings.iterations)
    evaluate(variables)  # the last step's result counts too
    final = best.variables
    if plan.joint_labels:
        final_labels = final[1].argmax(-1)
    else:
        assert labels is not None
        final_labels = labels.to(device).unsqueeze(1).expand(len(observations), restarts, -1)
    ok = alive & torch.isfinite(best.matching)
    return EngineOutput(images=final[0].detach().cpu(), labels=final_labels.cpu(),
                        matching_loss=best.matching.detach().cpu(), alive=ok.cpu(),
                        seconds=time.perf_counter() - start, evaluations=evaluations, program=program.name)
