"""Optimisers over stacked trials: every update is per trial, so a batch of trials equals running them apart.

Variables are tensors whose two leading dimensions are (observations, restarts). Nothing here reads a
value back to the host, so a CUDA loop never synchronises.
"""

from __future__ import annotations

import torch

__all__ = ["Adam", "LBFGS", "make_optimizer", "step_factor"]


def step_factor(iteration: int, iterations: int) -> float:
    """Step schedule of Inverting Gradients: x0.1 at 3/8, 5/8 and 7/8 of the run."""
    milestones = (iterations * 3 // 8, iterations * 5 // 8, iterations * 7 // 8)
    return 0.1 ** sum(iteration >= m for m in milestones)


class Adam:
    """Adam, elementwise; with ``signed`` it follows the sign of the gradient (Inverting Gradients)."""

    def __init__(self, signed: bool, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.signed = signed
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.moments: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def step(self, variables: list[torch.Tensor], gradients: list[torch.Tensor],
             lr: float) -> list[torch.Tensor]:
        if self.signed:
            gradients = [g.sign() for g in gradients]
        if self.moments is None:
            self.moments = [(torch.zeros_like(v), torch.zeros_like(v)) for v in variables]
        self.steps += 1
        beta1, beta2 = self.betas
        first_fix = 1 - beta1 ** self.steps
        second_fix = 1 - beta2 ** self.steps
        updated = []
        for index, (variable, gradient) in enumerate(zip(variables, gradients, strict=True)):
            first, second = self.moments[index]
            first = first.mul(beta1).add_(gradient, alpha=1 - beta1)
            second = second.mul(beta2).addcmul_(gradient, gradient, value=1 - beta2)
            self.moments[index] = (first, second)
            denominator = (second / second_fix).sqrt_().add_(self.eps)
            updated.append(variable - lr * (first / first_fix) / denominator)
        return updated


class LBFGS:
    """L-BFGS with a fixed step (as DLG runs torch's L-BFGS: no line search), one history per trial.

    Curvature pairs with s.y too small are masked out per trial (torch skips them too); the
    two-loop recursion runs on all trials at once with per-trial dot products.
    """

    def __init__(self, history_size: int = 100) -> None:
        self.history_size = history_size
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, rho), oldest first
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self.scale: torch.Tensor | None = None

    def step(self, variables: list[torch.Tensor], gradients: list[torch.Tensor],
             lr: float) -> list[torch.Tensor]:
        lead = variables[0].shape[:2]
        flat = torch.cat([v.reshape(*lead, -1) for v in variables], dim=-1)
        grad = torch.cat([g.reshape(*lead, -1) for g in gradients], dim=-1)
        if self.previous is None:
            # torch's first step: lr * min(1, 1 / |g|_1), per trial.
            step = lr * (1.0 / grad.abs().sum(-1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
            self.scale = torch.ones(lead, dtype=flat.dtype, device=flat.device)
        else:
            previous_flat, previous_grad = self.previous
            s, y = flat - previous_flat, grad - previous_grad
            ys = (s * y).sum(-1)
            accepted = ys > 1e-10
            rho = torch.where(accepted, 1.0 / ys.clamp_min(1e-10), torch.zeros_like(ys))
            self.pairs.append((s, y, rho))
            if len(self.pairs) > self.history_size:
                self.pairs.pop(0)
            self.scale = torch.where(accepted, ys / (y * y).sum(-1).clamp_min(1e-30), self.scale)
            step = lr
        direction = -grad
        alphas = []
        for s, y, rho in reversed(self.pairs):  # a masked pair has rho = 0 and changes nothing
            alpha = rho * (s * direction).sum(-1)
            direction = direction - alpha.unsqueeze(-1) * y
            alphas.append(alpha)
        direction = direction * self.scale.unsqueeze(-1)
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas), strict=True):
            beta = rho * (y * direction).sum(-1)
            direction = direction + (alpha - beta).unsqueeze(-1) * s
        self.previous = (flat, grad)
        new_flat = flat + step * direction
        updated, offset = [], 0
        for variable in variables:
            size = variable[0, 0].numel()
            updated.append(new_flat[..., offset:offset + size].reshape(variable.shape))
            offset += size
        return updated


def make_optimizer(name: str, history_size: int = 100) -> Adam | LBFGS:
    """The optimiser named in a plan: ``signed-adam``, ``adam`` or ``lbfgs``."""
    if name == "signed-adam":
        return Adam(signed=True)
    if name == "adam":
        return Adam(signed=False)
    if name == "lbfgs":
        return LBFGS(history_size)
    raise ValueError(f"unknown optimizer {name!r}; use 'signed-adam', 'adam' or 'lbfgs'")
