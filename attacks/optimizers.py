"""Optimisers over stacked trials: every update is per trial, so a batch of trials equals running them apart.

Variables are tensors whose two leading dimensions are (observations, restarts). An optimiser's
``iterate`` makes one iteration: for Adam one evaluation and one step; for L-BFGS one step the
way ``torch.optim.LBFGS.step(closure)`` makes it (DLG's recipe): up to ``lbfgs_evaluations``
evaluations, each trial stopping early on torch's tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from semsim_audit.attacks.config import AttackConfig

__all__ = ["Evaluated", "Adam", "LBFGS", "make_optimizer", "step_factor"]

# torch.optim.LBFGS's defaults, which DLG runs with.
TOLERANCE_GRAD = 1e-7
TOLERANCE_CHANGE = 1e-9


@dataclass
class Evaluated:
    """What an evaluation gives an optimiser: per-trial gradients (zero for dead trials) and objectives."""

    gradients: list[torch.Tensor]
    total: torch.Tensor   # (O, R)
    alive: torch.Tensor   # (O, R) bool


# evaluate(variables, wanted): wanted is an (O, R) bool mask of the trials that need a fresh evaluation
# (None = all); a trial left out gets zeros, which the optimiser must not read.
Evaluate = Callable[[list[torch.Tensor], torch.Tensor | None], Evaluated]
Project = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def step_factor(iteration: int, iterations: int) -> float:
    """Step schedule of Inverting Gradients: x0.1 at 3/8, 5/8 and 7/8 of the run."""
    milestones = (iterations * 3 // 8, iterations * 5 // 8, iterations * 7 // 8)
    return 0.1 ** sum(iteration >= m for m in milestones)


def _per_trial(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(*mask.shape, *([1] * (like.dim() - mask.dim())))


class Adam:
    """Adam, elementwise; with ``signed`` it follows the sign of the gradient (Inverting Gradients)."""

    def __init__(self, signed: bool, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.signed = signed
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.moments: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def iterate(self, variables: list[torch.Tensor], evaluate: Evaluate, lr: float,
                project: Project) -> list[torch.Tensor]:
        evaluated = evaluate(variables, None)
        stepped = project(self.step(variables, evaluated.gradients, lr))
        return [torch.where(_per_trial(evaluated.alive, new), new, old)
                for new, old in zip(stepped, variables, strict=True)]

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
    """torch's L-BFGS without line search (as DLG runs it), with its own state and stopping per trial.

    Variables are flattened to (trials, n). Each trial keeps its own direction, step, curvature
    history (its last ``history_size`` accepted pairs, s.y > 1e-10, as torch keeps them) and
    Hessian scale; within an iteration a trial stops when torch would break out of its loop, and
    waits, unchanged and left out of the evaluations, while the others go on. The direction is
    torch's two-loop recursion written in its compact matrix form (Byrd, Nocedal and Schnabel
    1994): the same vector in exact arithmetic, computed with a few batched products instead of
    hundreds of small operations.
    """

    def __init__(self, history_size: int = 100, max_evaluations: int = 20) -> None:
        self.history_size = history_size
        self.max_iter = max_evaluations
        self.started = False
        self.direction: torch.Tensor | None = None       # (T, n)
        self.step_size: torch.Tensor | None = None        # (T,)
        self.previous_grad: torch.Tensor | None = None    # (T, n)
        self.previous_loss: torch.Tensor | None = None    # (T,)
        self.scale: torch.Tensor | None = None            # (T,) Hessian diagonal, ys / yy
        self.pairs: torch.Tensor | None = None            # (T, 2, H, n): s and y, a ring slot per pair
        self.sy: torch.Tensor | None = None               # (T, H, H) s_k . y_l by slot, float64
        self.yy: torch.Tensor | None = None               # (T, H, H) y_k . y_l by slot, float64
        self.position: torch.Tensor | None = None         # (T,) next slot
        self.filled: torch.Tensor | None = None           # (T,) pairs held

    # -- flattening ----------------------------------------------------------------------------
    @staticmethod
    def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
        lead = tensors[0].shape[:2]
        return torch.cat([t.reshape(lead.numel(), -1) for t in tensors], dim=1)

    @staticmethod
    def _unflat(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
        out, offset = [], 0
        for tensor in like:
            size = tensor[0, 0].numel()
            out.append(flat[:, offset:offset + size].reshape(tensor.shape))
            offset += size
        return out

    # -- curvature history and direction ---------------------------------------------------------
    def _allocate(self, trials: int, size: int, like: torch.Tensor) -> None:
        history = self.history_size
        self.pairs = like.new_zeros((trials, 2, history, size))
        self.sy = torch.zeros((trials, history, history), dtype=torch.float64, device=like.device)
        self.yy = torch.zeros_like(self.sy)
        self.position = torch.zeros(trials, dtype=torch.long, device=like.device)
        self.filled = torch.zeros(trials, dtype=torch.long, device=like.device)

    def _update_and_direct(self, grad: torch.Tensor, s: torch.Tensor, y: torch.Tensor,
                           accept: torch.Tensor) -> torch.Tensor:
        """Store each accepting trial's (s, y), then return -H g for every trial over its own history.

        One pass over the history gives every product this needs (S'g, Y'g, Y's, S'y, Y'y, against
        the pairs held before this one); a second pass forms the direction.
        """
        trials, size = grad.shape
        history = self.history_size
        if self.pairs is None:
            self._allocate(trials, size, grad)
        assert self.pairs is not None and self.sy is not None and self.yy is not None
        assert self.position is not None and self.filled is not None and self.scale is not None
        index = torch.arange(trials, device=grad.device)
        flat_pairs = self.pairs.view(trials, 2 * history, size)
        # (T, 3, n) x (T, n, 2H): this orientation keeps both operands contiguous in n, several
        # times faster on a CPU than (T, 2H, n) x (T, n, 3) with a strided right-hand side.
        products = torch.bmm(torch.stack([grad, s, y], dim=1), flat_pairs.transpose(1, 2))
        products = products.transpose(1, 2).double()  # (T, 2H, 3)
        s_g, y_g = products[:, :history, 0], products[:, history:, 0]
        y_s, s_y, y_y = products[:, history:, 1], products[:, :history, 2], products[:, history:, 2]
        slot = self.position
        new_sy, new_yy = (s * y).sum(1).double(), (y * y).sum(1).double()
        rows = accept[:, None]
        # Row and column of the written slot, against the pairs it joins; then its own entry.
        self.sy[index, slot] = torch.where(rows, y_s, self.sy[index, slot])        # s . y_l
        self.sy[index, :, slot] = torch.where(rows, s_y, self.sy[index, :, slot])  # s_k . y
        self.yy[index, slot] = torch.where(rows, y_y, self.yy[index, slot])
        self.yy[index, :, slot] = torch.where(rows, y_y, self.yy[index, :, slot])
        self.sy[index, slot, slot] = torch.where(accept, new_sy, self.sy[index, slot, slot])
        self.yy[index, slot, slot] = torch.where(accept, new_yy, self.yy[index, slot, slot])
        s_g = s_g.clone()
        y_g = y_g.clone()
        s_g[index, slot] = torch.where(accept, (s * grad).sum(1).double(), s_g[index, slot])
        y_g[index, slot] = torch.where(accept, (y * grad).sum(1).double(), y_g[index, slot])
        self.pairs[index, :, slot] = torch.where(accept[:, None, None], torch.stack([s, y], dim=1),
                                                 self.pairs[index, :, slot])
        self.position = torch.where(accept, (slot + 1) % history, slot)
        self.filled = torch.where(accept, (self.filled + 1).clamp(max=history), self.filled)
        self.scale = torch.where(accept, (new_sy / new_yy.clamp_min(1e-30)).to(self.scale.dtype), self.scale)
        return self._direction(grad, s_g, y_g, flat_pairs)

    def _direction(self, grad: torch.Tensor, s_g: torch.Tensor, y_g: torch.Tensor,
                   flat_pairs: torch.Tensor) -> torch.Tensor:
        """-H g: torch's two-loop recursion over each trial's history, in compact form.

        H g = scale g + S p - scale Y u, with u = R^-1 S'g and p = R^-T ((D + scale Y'Y) u - scale Y'g),
        R the upper triangle of S'Y and D its diagonal, all in chronological order (oldest first).
        """
        assert self.sy is not None and self.yy is not None and self.scale is not None
        assert self.position is not None and self.filled is not None
        trials, history = grad.shape[0], self.history_size
        depth = int(self.filled.max())
        index = torch.arange(trials, device=grad.device)
        order = torch.arange(depth, device=grad.device)
        valid = order[None, :] >= (depth - self.filled)[:, None]                  # (T, M); padding first
        slots = (self.position[:, None] - depth + order[None, :]) % history       # (T, M)
        slots = torch.where(valid, slots, torch.zeros_like(slots))
        a = torch.where(valid, s_g.gather(1, slots), 0.0)
        b = torch.where(valid, y_g.gather(1, slots), 0.0)
        pair = valid[:, :, None] & valid[:, None, :]
        sy = torch.where(pair, self.sy[index[:, None, None], slots[:, :, None], slots[:, None, :]], 0.0)
        yy = torch.where(pair, self.yy[index[:, None, None], slots[:, :, None], slots[:, None, :]], 0.0)
        # Padding is inert: a unit diagonal, nothing off it, zero right-hand side.
        eye = torch.diag_embed((~valid).double())
        upper = torch.triu(sy) + eye
        diagonal = torch.diag_embed(torch.diagonal(sy, dim1=1, dim2=2)) + eye
        scale = self.scale.double()
        u = torch.linalg.solve_triangular(upper, a[:, :, None], upper=True)
        rhs = (diagonal + scale[:, None, None] * yy) @ u - scale[:, None, None] * b[:, :, None]
        p = torch.linalg.solve_triangular(upper.transpose(1, 2), rhs, upper=False)[:, :, 0]
        coefficients = torch.zeros((trials, 2, history), dtype=torch.float64, device=grad.device)
        coefficients[:, 0].scatter_add_(1, slots, torch.where(valid, p, 0.0))
        coefficients[:, 1].scatter_add_(1, slots, torch.where(valid, -scale[:, None] * u[:, :, 0], 0.0))
        combined = torch.bmm(coefficients.view(trials, 1, 2 * history).to(grad.dtype), flat_pairs)[:, 0]
        return -(scale[:, None].to(grad.dtype) * grad + combined)

    # -- one torch-style step ----------------------------------------------------------------------
    def iterate(self, variables: list[torch.Tensor], evaluate: Evaluate, lr: float,
                project: Project) -> list[torch.Tensor]:
        like = variables
        flat = self._flat(variables)
        evaluated = evaluate(variables, None)
        grad = self._flat(evaluated.gradients)
        loss = evaluated.total.reshape(-1)
        alive = evaluated.alive.reshape(-1)
        active = alive & ~(grad.abs().amax(1) <= TOLERANCE_GRAD)
        trials = flat.shape[0]
        if self.direction is None:
            self.direction = torch.zeros_like(flat)
            self.step_size = flat.new_full((trials,), lr)
            self.scale = flat.new_ones(trials)
            self.previous_grad = grad.clone()
            self.previous_loss = loss.clone()
        assert self.step_size is not None and self.previous_grad is not None
        assert self.previous_loss is not None and self.scale is not None
        inner = 0
        while inner < self.max_iter and bool(active.any()):
            inner += 1
            first = not self.started
            self.started = True
            if first:
                direction = -grad
            else:
                y = grad - self.previous_grad
                s = self.direction * self.step_size[:, None]
                accept = active & ((y * s).sum(1) > 1e-10)
                direction = self._update_and_direct(grad, s, y, accept)
            self.direction = torch.where(active[:, None], direction, self.direction)
            self.previous_grad = torch.where(active[:, None], grad, self.previous_grad)
            self.previous_loss = torch.where(active, loss, self.previous_loss)
            if first:
                step = lr * (1.0 / grad.abs().sum(1).clamp_min(1e-30)).clamp(max=1.0)
            else:
                step = torch.full_like(self.step_size, lr)
            self.step_size = torch.where(active, step, self.step_size)
            directional = (grad * self.direction).sum(1)
            active = active & ~(directional > -TOLERANCE_CHANGE)
            moved = flat + self.step_size[:, None] * self.direction
            flat = torch.where(active[:, None], self._flat(project(self._unflat(moved, like))), flat)
            if inner == self.max_iter:
                break  # torch evaluates the last move at the start of the next step
            if not bool(active.any()):
                break  # every trial stopped: nothing moved, nothing to evaluate
            # Only the trials still going are evaluated: the others wait, unchanged, for the next step.
            evaluated = evaluate(self._unflat(flat, like), active.reshape(evaluated.alive.shape))
            grad = torch.where(active[:, None], self._flat(evaluated.gradients), grad)
            loss = torch.where(active, evaluated.total.reshape(-1), loss)
            active = active & evaluated.alive.reshape(-1)
            converged = grad.abs().amax(1) <= TOLERANCE_GRAD
            stalled = (self.direction * self.step_size[:, None]).abs().amax(1) <= TOLERANCE_CHANGE
            flat_loss = (loss - self.previous_loss).abs() < TOLERANCE_CHANGE
            active = active & ~converged & ~stalled & ~flat_loss
        return self._unflat(flat, like)


def make_optimizer(settings: AttackConfig) -> Adam | LBFGS:
    """The optimiser a resolved config names: ``signed-adam``, ``adam`` or ``lbfgs``."""
    if settings.optimizer == "signed-adam":
        return Adam(signed=True)
    if settings.optimizer == "adam":
        return Adam(signed=False)
    if settings.optimizer == "lbfgs":
        return LBFGS(settings.history_size, settings.lbfgs_evaluations)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; use 'signed-adam', 'adam' or 'lbfgs'")
