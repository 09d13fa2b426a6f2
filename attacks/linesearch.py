"""Strong-Wolfe line search for many trials at once, each with its own bracket and its own steps.

``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` searches one point at a time. Here every
trial runs the same search (torch's port of ``lswolfe.lua``: bracketing, then zoom by cubic
interpolation, the same constants and tolerances) as a small generator over Python floats; the
driver collects the step every unfinished trial asks for, evaluates those trials in one batched
call, and sends each its loss and directional derivative. A trial that finishes waits, left out of
the evaluations, while the others go on; the batch costs what its longest search costs.

Gradients are large, so the generators do not hold them: they name *slots* (the two bracket ends,
the previous point, the start, the newest evaluation) and the driver moves gradient rows between
slots as each search says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import torch

__all__ = ["strong_wolfe"]

C1, C2 = 1e-4, 0.9          # sufficient decrease, curvature (torch's defaults)
TOLERANCE_CHANGE = 1e-9

# Gradient sources a search names, besides the slots 0 and 1 (bracket ends) and 2 (previous point).
START, NEW = -1, -2

Moves = list[tuple[int, int]]                     # (destination slot, source slot, START or NEW)
Search = Generator[float, tuple[float, float], tuple[float, float, int]]
# evaluate(steps, wanted) -> (losses (T,), gradients (T, n), alive (T,)) at start + step x direction
EvaluateAt = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _cubic_minimum(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
                   bounds: tuple[float, float] | None = None) -> float:
    """The minimiser of the cubic through two points with values and slopes, clipped to ``bounds``."""
    low, high = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    square = d1 * d1 - g1 * g2
    if not square >= 0:  # also when a value is not finite: bisect
        return (low + high) / 2.0
    d2 = math.sqrt(square)
    if x1 <= x2:
        position = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        position = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(position, low), high)


def _search(t: float, f: float, gtd: float, d_norm: float, max_ls: int, moves: Moves) -> Search:
    """One trial's strong-Wolfe search from step ``t``; yields steps, returns (step, loss, slot)."""
    f_new, gtd_new = yield t
    t_prev, f_prev, gtd_prev = 0.0, f, gtd
    moves.append((2, START))
    bracket: list[float] = []
    values: list[float] = []
    slopes: list[float] = [0.0, 0.0]
    done, ls_iter = False, 0
    while ls_iter < max_ls:
        if f_new > f + C1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
            bracket, values, slopes = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            moves += [(0, 2), (1, NEW)]
            break
        if abs(gtd_new) <= -C2 * gtd:
            bracket, values, done = [t], [f_new], True
            moves.append((0, NEW))
            break
        if gtd_new >= 0:
            bracket, values, slopes = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            moves += [(0, 2), (1, NEW)]
            break
        previous = t
        t = _cubic_minimum(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                           bounds=(t + 0.01 * (t - t_prev), t * 10))
        t_prev, f_prev, gtd_prev = previous, f_new, gtd_new
        moves.append((2, NEW))
        f_new, gtd_new = yield t
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, values = [0.0, t], [f, f_new]
        moves += [(0, START), (1, NEW)]
    low, high = (0, 1) if values[0] <= values[-1] else (1, 0)
    insufficient = False
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < TOLERANCE_CHANGE:
            break
        t = _cubic_minimum(bracket[0], values[0], slopes[0], bracket[1], values[1], slopes[1])
        # Near an end of the bracket: a second time, or outside it, move a tenth of it inwards.
        top, bottom = max(bracket), min(bracket)
        eps = 0.1 * (top - bottom)
        if min(top - t, t - bottom) < eps:
            if insufficient or t >= top or t <= bottom:
                t = top - eps if abs(t - top) < abs(t - bottom) else bottom + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, gtd_new = yield t
        ls_iter += 1
        if f_new > f + C1 * t * gtd or f_new >= values[low]:
            bracket[high], values[high], slopes[high] = t, f_new, gtd_new
            moves.append((high, NEW))
            low, high = (0, 1) if values[0] <= values[1] else (1, 0)
        else:
            if abs(gtd_new) <= -C2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], values[high], slopes[high] = bracket[low], values[low], slopes[low]
                moves.append((high, low))
            bracket[low], values[low], slopes[low] = t, f_new, gtd_new
            moves.append((low, NEW))
    return bracket[low], values[low], low


def strong_wolfe(evaluate_at: EvaluateAt, steps: torch.Tensor, direction: torch.Tensor,
                 loss: torch.Tensor, grad: torch.Tensor, searching: torch.Tensor,
                 budget: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Search every trial in ``searching`` along its ``direction`` from its initial step.

    ``steps`` (T,), ``loss`` (T,), ``grad`` and ``direction`` (T, n) are at the start points;
    ``budget`` (T,) caps each search's evaluations after its first (torch's ``max_ls``). Returns
    the accepted steps, their losses and gradients, and how many evaluations each trial made; a
    trial not searching, or one whose evaluation stopped being finite, keeps step 0 and its start.
    """
    trials = grad.shape[0]
    slopes = (grad * direction).sum(1)
    d_norms = direction.abs().amax(1)
    slots = grad.new_zeros((trials, 3, grad.shape[1]))
    final_steps = torch.zeros_like(steps)
    final_loss, final_grad = loss.clone(), grad.clone()
    used = torch.zeros(trials, dtype=torch.long, device=grad.device)
    current = steps.clone()
    searches: dict[int, tuple[Search, Moves]] = {}
    starts = zip(searching.tolist(), current.tolist(), loss.tolist(), slopes.tolist(), d_norms.tolist(),
                 budget.tolist(), strict=True)
    for trial, (wanted, t, f, gtd, d_norm, max_ls) in enumerate(starts):
        if wanted:
            moves: Moves = []
            search = _search(t, f, gtd, d_norm, max_ls, moves)
            current[trial] = next(search)
            searches[trial] = (search, moves)
    while searches:
        wanted = torch.zeros(trials, dtype=torch.bool, device=grad.device)
        wanted[list(searches)] = True
        values, gradients, alive = evaluate_at(current, wanted)
        used += wanted.long()
        new_slopes = (gradients * direction).sum(1)
        for trial, f_new, gtd_new, ok in zip(list(searches), *(
                t[list(searches)].tolist() for t in (values, new_slopes, alive)), strict=True):
            search, moves = searches[trial]
            if not ok:
                del searches[trial]  # diverged: the trial stays where it was
                continue
            try:
                current[trial] = search.send((f_new, gtd_new))
                finished = None
            except StopIteration as stop:
                finished = stop.value
            for destination, source in moves:
                row = (gradients[trial] if source == NEW else grad[trial] if source == START
                       else slots[trial, source])
                slots[trial, destination] = row
            moves.clear()
            if finished is not None:
                step, value, slot = finished
                final_steps[trial], final_loss[trial] = step, value
                final_grad[trial] = slots[trial, slot]
                del searches[trial]
    return final_steps, final_loss, final_grad, used
