"""Where a batched L-BFGS attack's time goes: evaluations (one trial alone, or several), directions, the rest.

Runs one case of ``attack_quality.py`` (``dlg-lenet`` by default: iDLG on 8 photos, 300 iterations)
with our engine only, timing the program's evaluations and the optimiser's direction updates as it
goes, and prints a markdown table. The timers add a few microseconds a call; the attack itself is the
one the quality benchmark runs (same observations, seeds and settings).

    OMP_NUM_THREADS=2 python benchmarks/lbfgs_phases.py
    OMP_NUM_THREADS=2 python benchmarks/lbfgs_phases.py --case dlg-joint-lenet --iterations 100
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch

from semsim_audit.attacks import AttackConfig, run_attacks
from semsim_audit.attacks.optimizers import LBFGS
from semsim_audit.attacks.programs import StackedProgram
from semsim_audit.core import seed_everything
from semsim_audit.data import load_dataset
from semsim_audit.models import model_for

try:  # run as a script (python benchmarks/lbfgs_phases.py)
    from attack_quality import CASES, _client_observation
except ImportError:  # pragma: no cover - imported as benchmarks.lbfgs_phases
    from benchmarks.attack_quality import CASES, _client_observation


class Timers:
    """Seconds and calls per phase, each call filed under the phase its arguments name."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def wrap(self, owner: type, name: str, phase: Callable[[tuple[Any, ...]], str]) -> Callable[[], None]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            key = phase(args)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    lbfgs_cases = [c.name for c in CASES if c.attack in ("dlg", "idlg")]
    parser.add_argument("--case", default="dlg-lenet", choices=lbfgs_cases)
    parser.add_argument("--iterations", type=int, default=None, help="default: the case's own budget")
    args = parser.parse_args()
    (case,) = [c for c in CASES if c.name == args.case]
    seed_everything(0)
    photos = load_dataset("photos", train=False)
    model = model_for(case.model, photos.spec, **case.model_options)
    picks = [(i % 10) * (len(photos) // 10) + i // 10 for i in range(case.images)]
    observations = [_client_observation(model, photos[i][0][None], torch.tensor([photos[i][1]]), photos.spec,
                                        1, case.labels_known) for i in picks]
    iterations = args.iterations or case.iterations

    timers = Timers()

    def evaluation(call: tuple[Any, ...]) -> str:
        program, trials = call[0], call[3] if len(call) > 3 else None
        count = program.trials if trials is None else int(trials.numel())
        return "evaluations, one trial" if count == 1 else "evaluations, several trials"

    def direction(call: tuple[Any, ...]) -> str:
        return "directions, one trial" if int(call[5].sum()) == 1 else "directions, several trials"

    restore = [timers.wrap(StackedProgram, "evaluate", evaluation),
               timers.wrap(LBFGS, "_update_and_direct", direction)]
    try:
        start = time.perf_counter()
        results = run_attacks(case.attack, observations, AttackConfig(iterations=iterations, seed=0,
                                                                      **case.overrides))
        total = time.perf_counter() - start
    finally:
        for undo in restore:
            undo()
    print(f"{case.name}: {case.attack}, {len(observations)} photos, {iterations} iterations, "
          f"torch threads {torch.get_num_threads()}; {results[0].evaluations} batched evaluations, "
          f"{total:.1f} s")
    print("| phase | calls | seconds | ms / call | share |")
    print("|---|---|---|---|---|")
    for key in sorted(timers.seconds):
        seconds, calls = timers.seconds[key], timers.calls[key]
        print(f"| {key} | {calls} | {seconds:.1f} | {1000 * seconds / calls:.2f} | {seconds / total:.0%} |")
    rest = total - sum(timers.seconds.values())
    print(f"| line search, bookkeeping, the rest | - | {rest:.1f} | - | {rest / total:.0%} |")


if __name__ == "__main__":
    main()
