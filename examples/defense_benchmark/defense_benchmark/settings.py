"""The app's settings: defaults (equal to pyproject's run config) and the chosen defense's run config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from semsim_audit.bench import DEFENSES, Cell, parse_defense, parse_defense_option

DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 2,
    "num-partitions": 2,
    "dataset": "photos",
    "model": "lenet",
    "samples-per-client": 32,
    "lr": 0.01,
    "local-steps": 1,
    "batch-size": 1,
    "seed": 0,
    "attack": "inverting-gradients",
    "iterations": 100,
    "audited-clients": 2,
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
