"""The app's settings: defaults (equal to pyproject's run config and to ``semsim-audit bench``'s), the
chosen defense's run config and the cell's attacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from semsim_audit.bench import (
    DEFENSES,
    AttackSpec,
    Cell,
    cell_attacks,
    parse_attack,
    parse_defense,
    parse_defense_option,
)

# The sweep's defaults (semsim_audit.bench.FEDERATION and DEFAULT_ATTACKS; a test keeps them equal):
# FedSGD, one image per client and round, on the DLG LeNet, so the undefended model learns and leaks.
DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 40,
    "num-partitions": 16,
    "dataset": "photos",
    "model": "lenet",
    "uniform-init": True,
    "samples-per-client": 40,
    "lr": 0.1,
    "local-steps": 1,
    "batch-size": 1,
    "seed": 0,
    "attacks": "inverting-gradients idlg:30",
    "adaptive": True,
    "iterations": 200,
    "audited-clients": 4,
    "audit-every": 20,
    "out-dir": "runs/defense-benchmark",
    "defense": "none",
    "strength": "",
    "defense-options": "",
    "audit-export-originals": True,
}


def settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults overridden by the run's config (``flwr run --run-config``)."""
    return {**DEFAULTS, **dict(run_config)}


def defense_cell(config: Mapping[str, Any]) -> tuple[Cell, dict[str, Any]]:
    """The run's defense as a sweep cell, and the ``defense.*`` run config the mods read.

    The same parser as ``semsim-audit bench --defense``, so a bad name or strength fails at start
    with the same one-line message.
    """
    name, strength = str(config["defense"]), str(config["strength"]).strip()
    if name not in DEFENSES:
        raise ValueError(f"defense: unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    spec = parse_defense(f"{name}:{strength}" if strength else name)
    if len(spec.strengths) != 1:
        raise ValueError(f"strength: one value per run, got {strength!r}")
    options = dict(parse_defense_option(text) for text in str(config["defense-options"]).split())
    cell = Cell(name, spec.strengths[0], int(config["seed"]))
    return cell, cell.run_config(options)


def attacks(config: Mapping[str, Any], cell: Cell) -> list[AttackSpec]:
    """The cell's attacks (``attacks``, space-separated ``NAME[+mask][:ITERATIONS]``), the defense's
    adaptive one added when ``adaptive``; the first is the audit's own."""
    specs = [parse_attack(text) for text in str(config["attacks"]).split()]
    if not specs:
        raise ValueError("attacks: name at least one attack")
    return cell_attacks(cell.defense, specs, bool(config["adaptive"]))
