"""Optimisers over stacked trials: every update is per trial, so a batch of trials equals running them apart.

Variables are tensors whose two leading dimensions are (observations, restarts). An optimiser's
``iterate`` makes one iteration: for Adam one evaluation and one step; for L-BFGS one step the
way ``torch.optim.LBFGS.step(closure)`` makes it (DLG's recipe): up to ``lbfgs_evaluations``
steps, one evaluation each at a fixed step or a strong-Wolfe search each, every trial stopping early
on torch's tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from semsim_audit.attacks.config import AttackConfig
from semsim_audit.attacks.linesearch import strong_wolfe

__all__ = ["Evaluated", "Adam", "LBFGS", "make_optimizer", "step_factor"]

# torch.optim.LBFGS's defaults, which DLG runs with.
TOLERANCE_GRAD = 1e-7
TOLERANCE_CHANGE = 1e-9

# L-BFGS state kept per trial: its curvature pairs and their products, ring position and scale.
_HISTORY = ("pairs", "gram", "position", "filled", "scale")


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

    With ``line_search`` each step's length comes from a strong-Wolfe search per trial
    (:func:`~semsim_audit.attacks.linesearch.strong_wolfe`), as
    ``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` makes it: up to ``max_iter`` steps and
    ``max_eval`` evaluations per iteration. The search evaluates the point it accepts, so the next
    iteration starts from that evaluation instead of repeating it (torch repeats it).
    """

    def __init__(self, history_size: int = 100, max_evaluations: int = 20, line_search: bool = False) -> None:
        self.history_size = history_size
        self.max_iter = max_evaluations
        self.max_eval = max_evaluations * 5 // 4      # torch's max_eval default; binds with a line search
        self.line_search = line_search
        self.accepted: tuple[list[torch.Tensor], Evaluated] | None = None  # the last step's point, evaluated
        self.started = False
        self.direction: torch.Tensor | None = None       # (T, n)
        self.step_size: torch.Tensor | None = None        # (T,)
        self.previous_grad: torch.Tensor | None = None    # (T, n)
        self.previous_loss: torch.Tensor | None = None    # (T,)
        self.scale: torch.Tensor | None = None            # (T,) Hessian diagonal, ys / yy
        self.pairs: torch.Tensor | None = None            # (T, 2, H, n): s and y, a ring slot per pair
        self.gram: torch.Tensor | None = None             # (T, 2, H, H) s_k.y_l, y_k.y_l by slot, float64
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
        self.gram = torch.zeros((trials, 2, history, history), dtype=torch.float64, device=like.device)
        self.position = torch.zeros(trials, dtype=torch.long, device=like.device)
        self.filled = torch.zeros(trials, dtype=torch.long, device=like.device)

    def _update_and_direct(self, grad: torch.Tensor, s: torch.Tensor, y: torch.Tensor, accept: torch.Tensor,
                           active: torch.Tensor) -> torch.Tensor:
        """:meth:`_update_and_direct_all` for the ``active`` trials only (the others' rows are zero).

        The history is the largest thing an iteration reads ((T, 2, H, n)); once most trials have
        stopped, copying the few active trials' histories out and back costs less than reading all.
        """
        trials = grad.shape[0]
        if self.pairs is None:
            self._allocate(trials, grad.shape[1], grad)
        rows = active.nonzero().squeeze(1)
        if 2 * len(rows) > trials:
            return self._update_and_direct_all(grad, s, y, accept)
        first, last = int(rows[0]), int(rows[-1])
        # Consecutive rows (a single one, most often) are a view: what is written in place stays.
        picked: slice | torch.Tensor = slice(first, last + 1) if last - first + 1 == len(rows) else rows
        state = {name: getattr(self, name) for name in _HISTORY}
        for name, value in state.items():
            setattr(self, name, value[picked])
        try:
            direction = self._update_and_direct_all(grad[picked], s[picked], y[picked], accept[picked])
        finally:
            for name, value in state.items():
                part = getattr(self, name)
                if not (isinstance(picked, slice) and part.data_ptr() == value[picked].data_ptr()):
                    value[picked] = part
                setattr(self, name, value)
        return torch.zeros_like(grad).index_copy_(0, rows, direction)

    def _update_and_direct_all(self, grad: torch.Tensor, s: torch.Tensor, y: torch.Tensor,
                               accept: torch.Tensor) -> torch.Tensor:
        """Store each accepting trial's (s, y), then return -H g for every trial over its own history.

        One pass over the history gives every product this needs (S'g, Y'g, Y's, S'y, Y'y, against
        the pairs held before this one); a second pass forms the direction.
        """
        trials, size = grad.shape
        history = self.history_size
        assert self.pairs is not None and self.gram is not None  # allocated by _update_and_direct
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
        # The written slot's row (s . y_l, y . y_l) and column (s_k . y, y_k . y) against the pairs
        # it joins, its own entries on the diagonal; trials that did not accept keep theirs.
        row, column = torch.stack([y_s, y_y], dim=1), torch.stack([s_y, y_y], dim=1)  # (T, 2, H)
        own = torch.stack([new_sy, new_yy], dim=1)
        row[index, :, slot] = own
        column[index, :, slot] = own
        keep = ~accept[:, None, None]
        self.gram[index, :, slot] = torch.where(keep, self.gram[index, :, slot], row)
        self.gram[index, :, :, slot] = torch.where(keep, self.gram[index, :, :, slot], column)
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
        assert self.gram is not None and self.scale is not None
        assert self.position is not None and self.filled is not None
        trials, history = grad.shape[0], self.history_size
        depth = int(self.filled.max())
        order = torch.arange(depth, device=grad.device)
        slots = (self.position[:, None] - depth + order[None, :]) % history       # (T, M), oldest first
        full = bool((self.filled == depth).all())
        valid = order[None, :] >= (depth - self.filled)[:, None]                  # padding first
        if not full:
            slots = torch.where(valid, slots, torch.zeros_like(slots))
        rows = self.gram.gather(2, slots[:, None, :, None].expand(trials, 2, depth, history))
        gram = rows.gather(3, slots[:, None, None, :].expand(trials, 2, depth, depth))
        sy, yy = gram[:, 0], gram[:, 1]
        a, b = s_g.gather(1, slots), y_g.gather(1, slots)
        if not full:  # padding is inert: a unit diagonal, nothing off it, zero right-hand side
            pair = valid[:, :, None] & valid[:, None, :]
            eye = torch.diag_embed((~valid).double())
            sy = torch.where(pair, sy, 0.0) + eye
            yy = torch.where(pair, yy, 0.0)
            a, b = torch.where(valid, a, 0.0), torch.where(valid, b, 0.0)
        # The solves read only R's upper triangle; D u and Y'Y u are formed without D itself.
        scale = self.scale.double()[:, None]
        u = torch.linalg.solve_triangular(sy, a[:, :, None], upper=True)[:, :, 0]
        yy_u = torch.bmm(yy, u[:, :, None])[:, :, 0]
        rhs = torch.diagonal(sy, dim1=1, dim2=2) * u + scale * yy_u - scale * b
        if not full:
            rhs = torch.where(valid, rhs, 0.0)
        p = torch.linalg.solve_triangular(sy.transpose(1, 2), rhs[:, :, None], upper=False)[:, :, 0]
        coefficients = torch.zeros((trials, 2, history), dtype=torch.float64, device=grad.device)
        coefficients[:, 0].scatter_add_(1, slots, torch.where(valid, p, 0.0))
        coefficients[:, 1].scatter_add_(1, slots, torch.where(valid, -scale * u, 0.0))
        combined = torch.bmm(coefficients.view(trials, 1, 2 * history).to(grad.dtype), flat_pairs)[:, 0]
        return -(scale.to(grad.dtype) * grad + combined)

    # -- one torch-style step ----------------------------------------------------------------------
    def iterate(self, variables: list[torch.Tensor], evaluate: Evaluate, lr: float,
                project: Project) -> list[torch.Tensor]:
        like = variables
        flat = self._flat(variables)
        if self.accepted is not None and variables is self.accepted[0]:
            evaluated = self.accepted[1]
        else:
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
        spent = torch.ones(trials, dtype=torch.long, device=flat.device)  # evaluations this iteration
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
                direction = self._update_and_direct(grad, s, y, accept, active)
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
            if self.line_search:
                if not bool(active.any()):
                    break
                flat, loss, grad, alive, spent = self._search(flat, loss, grad, alive, active, spent,
                                                              evaluate, project, like, evaluated.alive.shape)
                active = active & alive
                if inner == self.max_iter:
                    break
                converged = grad.abs().amax(1) <= TOLERANCE_GRAD
                stalled = (self.direction * self.step_size[:, None]).abs().amax(1) <= TOLERANCE_CHANGE
                flat_loss = (loss - self.previous_loss).abs() < TOLERANCE_CHANGE
                active = active & (spent < self.max_eval) & ~converged & ~stalled & ~flat_loss
                continue
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
        result = self._unflat(flat, like)
        if self.line_search:
            shape = evaluated.alive.shape
            evaluated = Evaluated(self._unflat(grad, like), loss.reshape(shape), alive.reshape(shape))
            self.accepted = (result, evaluated)
        return result

    def _search(self, flat: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor, alive: torch.Tensor,
                active: torch.Tensor, spent: torch.Tensor, evaluate: Evaluate, project: Project,
                like: list[torch.Tensor], shape: torch.Size
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move every active trial by its strong-Wolfe step: points, losses, gradients, liveness, spend."""
        assert self.direction is not None and self.step_size is not None
        direction, latest = self.direction, [alive]

        def point(steps: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
            moved = self._flat(project(self._unflat(flat + steps[:, None] * direction, like)))
            return torch.where(wanted[:, None], moved, flat)

        def evaluate_at(steps: torch.Tensor, wanted: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            evaluated = evaluate(self._unflat(point(steps, wanted), like), wanted.reshape(shape))
            latest[0] = evaluated.alive.reshape(-1)
            return evaluated.total.reshape(-1), self._flat(evaluated.gradients), latest[0]

        steps, new_loss, new_grad, used = strong_wolfe(evaluate_at, self.step_size, direction, loss, grad,
                                                       active, self.max_eval - spent)
        self.step_size = torch.where(active, steps, self.step_size)
        moved = active & latest[0]
        return (point(steps, moved), torch.where(moved, new_loss, loss),
                torch.where(moved[:, None], new_grad, grad), latest[0], spent + used)


def make_optimizer(settings: AttackConfig) -> Adam | LBFGS:
    """The optimiser a resolved config names: ``signed-adam``, ``adam`` or ``lbfgs``."""
    if settings.optimizer == "signed-adam":
        return Adam(signed=True)
    if settings.optimizer == "adam":
        return Adam(signed=False)
    if settings.optimizer == "lbfgs":
        return LBFGS(settings.history_size, settings.lbfgs_evaluations,
                     line_search=settings.line_search == "strong-wolfe")
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; use 'signed-adam', 'adam' or 'lbfgs'")
