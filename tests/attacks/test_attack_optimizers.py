"""The batched L-BFGS makes torch's L-BFGS steps, trial by trial, and Adam is per trial."""

from __future__ import annotations

import importlib

import pytest
import torch

from semsim_audit.attacks.optimizers import LBFGS, Adam, Evaluated, step_factor


def _problem(trials: int, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth, non-quadratic objective per trial: 0.5 x'Ax - b'x + 0.1 sum(x^4)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn((trials, size, size), generator=generator, dtype=torch.float64)
    matrices = basis @ basis.transpose(1, 2) / size + 0.1 * torch.eye(size, dtype=torch.float64)
    return matrices, torch.randn((trials, size), generator=generator, dtype=torch.float64)


def _value(x: torch.Tensor, matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ matrix @ x - vector @ x + 0.1 * x.pow(4).sum()


def _batched_evaluate(matrices: torch.Tensor, vectors: torch.Tensor, counter: list[int]):
    def evaluate(variables: list[torch.Tensor], wanted: torch.Tensor | None = None) -> Evaluated:
        counter[0] += 1  # every trial is evaluated, wanted or not: the optimiser reads only the wanted
        x = variables[0].detach().requires_grad_(True)  # (O, R, n) with R = 1
        values = torch.stack([_value(x[t, 0], matrices[t], vectors[t]) for t in range(x.shape[0])])
        (gradient,) = torch.autograd.grad(values.sum(), x)
        alive = torch.ones_like(values, dtype=torch.bool)[:, None]
        return Evaluated([gradient], values.detach()[:, None], alive)

    return evaluate


def _torch_lbfgs(start: torch.Tensor, matrix: torch.Tensor, vector: torch.Tensor, steps: int,
                 history: int, line_search: str | None = None, lr: float = 1.0) -> tuple[torch.Tensor, int]:
    """torch.optim.LBFGS(lr=1) on one trial: the final point and how many evaluations it made."""
    x = start.clone().requires_grad_(True)
    reference = torch.optim.LBFGS([x], lr=lr, history_size=history, line_search_fn=line_search)
    evaluations = [0]

    def closure() -> torch.Tensor:
        evaluations[0] += 1
        reference.zero_grad()
        value = _value(x, matrix, vector)
        value.backward()
        return value

    for _ in range(steps):
        reference.step(closure)
    return x.detach(), evaluations[0]


def _run(matrices: torch.Tensor, vectors: torch.Tensor, start: torch.Tensor, steps: int,
         history: int, line_search: bool = False, lr: float = 1.0) -> tuple[torch.Tensor, int]:
    optimizer, counter = LBFGS(history_size=history, max_evaluations=20, line_search=line_search), [0]
    evaluate = _batched_evaluate(matrices, vectors, counter)
    variables = [start.clone()]
    for _ in range(steps):
        variables = optimizer.iterate(variables, evaluate, lr, lambda v: v)
    return variables[0], counter[0]


@pytest.mark.parametrize("history", [100, 3])
def test_lbfgs_steps_match_torch_lbfgs_for_every_trial(history: int) -> None:
    trials, steps = 3, 4
    matrices, vectors = _problem(trials)
    start = torch.randn((trials, 1, 12), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched, _ = _run(matrices, vectors, start, steps, history)
    for t in range(trials):
        expected, _ = _torch_lbfgs(start[t, 0], matrices[t], vectors[t], steps, history)
        torch.testing.assert_close(batched[t, 0], expected, rtol=1e-7, atol=1e-9)


def test_a_trial_that_converges_stops_while_the_others_go_on() -> None:
    matrices, vectors = _problem(2)
    matrices[0] = torch.eye(12, dtype=torch.float64)  # an easy trial beside a hard one
    start = torch.randn((2, 1, 12), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batched, evaluations = _run(matrices, vectors, start, 6, 100)
    easy, easy_evaluations = _torch_lbfgs(start[0, 0], matrices[0], vectors[0], 6, 100)
    hard, hard_evaluations = _torch_lbfgs(start[1, 0], matrices[1], vectors[1], 6, 100)
    assert easy_evaluations < hard_evaluations  # torch stopped the easy trial early: the case is exercised
    torch.testing.assert_close(batched[0, 0], easy, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(batched[1, 0], hard, rtol=1e-7, atol=1e-9)
    # Each step costs the batch what its slowest trial needs: once both converge, steps stay short.
    assert max(easy_evaluations, hard_evaluations) <= evaluations < 6 * 20


# A first guess far too long makes the searches zoom; one far too short makes them extrapolate.
@pytest.mark.parametrize("lr", [100.0, 0.01])
def test_strong_wolfe_steps_match_torch_line_search_for_every_trial(monkeypatch: pytest.MonkeyPatch,
                                                                     lr: float) -> None:
    searches: list[int] = []  # evaluations of each of torch's line searches
    module = importlib.import_module("torch.optim.lbfgs")
    original = module._strong_wolfe

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = original(*args, **kwargs)
        searches.append(result[3])
        return result

    monkeypatch.setattr(module, "_strong_wolfe", counted)
    trials, steps = 3, 3
    matrices, vectors = _problem(trials)
    start = torch.randn((trials, 1, 12), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched, evaluations = _run(matrices, vectors, start, steps, 100, line_search=True, lr=lr)
    expected = [_torch_lbfgs(start[t, 0], matrices[t], vectors[t], steps, 100, "strong_wolfe", lr)
                for t in range(trials)]
    assert max(searches) >= 3  # some searches bracketed and zoomed: more than the first guess was tried
    for t, (point, _) in enumerate(expected):
        torch.testing.assert_close(batched[t, 0], point, rtol=1e-7, atol=1e-9)
    # torch evaluates each accepted point again at the start of its next step; the batch does not.
    assert evaluations < max(count for _, count in expected) + steps


def test_a_trial_that_diverges_inside_a_search_stays_put_and_the_others_go_on() -> None:
    matrices, vectors = _problem(2)
    start = torch.randn((2, 1, 12), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    counter = [0]
    healthy = _batched_evaluate(matrices, vectors, counter)
    seen: list[torch.Tensor] = []

    def evaluate(variables: list[torch.Tensor], wanted: torch.Tensor | None = None) -> Evaluated:
        result = healthy(variables, wanted)
        seen.append(variables[0][1].clone())
        if counter[0] >= 3:  # trial 1 diverges from its third evaluation on, as the engine reports it
            result.alive[1] = False
            result.gradients[0][1] = 0.0
        return result

    optimizer, variables = LBFGS(history_size=100, max_evaluations=20, line_search=True), [start.clone()]
    for _ in range(3):
        variables = optimizer.iterate(variables, evaluate, 1.0, lambda v: v)
    expected, _ = _torch_lbfgs(start[0, 0], matrices[0], vectors[0], 3, 100, "strong_wolfe")
    torch.testing.assert_close(variables[0][0, 0], expected, rtol=1e-7, atol=1e-9)
    assert torch.equal(variables[0][1], seen[1])  # its first step, accepted before it diverged


def test_adam_updates_each_trial_from_its_own_gradient_only() -> None:
    variables = [torch.zeros((2, 2, 3))]
    gradients = [torch.zeros((2, 2, 3))]
    gradients[0][1, 0] = 1.0
    stepped = Adam(signed=True).step(variables, gradients, 0.1)[0]
    assert torch.all(stepped[1, 0] < 0) and torch.all(stepped[0] == 0) and torch.all(stepped[1, 1] == 0)


def test_step_schedule_divides_by_ten_at_three_eighths_five_eighths_seven_eighths() -> None:
    factors = [step_factor(i, 80) for i in (0, 29, 30, 50, 70, 79)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.001, 0.001])
