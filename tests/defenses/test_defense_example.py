"""examples/defense_benchmark: its run config is the sweep's defaults; one cell runs end to end."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "defense_benchmark"


@pytest.fixture()
def example(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import defense_benchmark.settings as settings

    return settings


def test_pyproject_run_config_equals_the_app_defaults(example) -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["flwr"]["app"]["config"] == example.DEFAULTS
    components = project["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "defense_benchmark.server_app:app",
                          "clientapp": "defense_benchmark.client_app:app"}


def test_the_app_defaults_are_the_sweeps(example) -> None:
    from semsim_audit.bench import DEFAULT_ATTACKS, FEDERATION

    keys = {"dataset": "dataset", "model": "model", "uniform_init": "uniform-init",
            "clients": "num-partitions", "rounds": "num-server-rounds", "lr": "lr",
            "local_steps": "local-steps", "batch_size": "batch-size", "audited": "audited-clients",
            "every": "audit-every", "iterations": "iterations"}
    assert {name: example.DEFAULTS[key] for name, key in keys.items()} == {
        name: value for name, value in FEDERATION.items() if name != "seeds"}
    assert example.DEFAULTS["attacks"].split() == list(DEFAULT_ATTACKS) and example.DEFAULTS["adaptive"]
    # Every client trains on its whole IID shard of the 640 training images, as in the sweep.
    assert example.DEFAULTS["samples-per-client"] * example.DEFAULTS["num-partitions"] == 640
    cell, _ = example.defense_cell(example.settings({"defense": "prune", "strength": "0.9"}))
    assert [a.label for a in example.attacks(example.settings({}), cell)] == [
        "inverting-gradients", "idlg", "inverting-gradients+mask"]


def test_defense_settings_become_the_mods_run_config(example) -> None:
    config = example.settings({"defense": "noise", "strength": "0.1", "seed": 3,
                               "defense-options": "noise.clip=2 localdp.delta=1e-6"})
    cell, run_config = example.defense_cell(config)
    assert cell.cell_id == "noise-0.1-seed3"
    assert run_config == {"defense.seed": 3, "defense.noise.sigma": 0.1, "defense.noise.clip": 2.0}
    assert example.defense_cell(example.settings({}))[1] == {"defense.seed": 0}
    for bad in ({"defense": "blur"}, {"defense": "prune", "strength": "0.5,0.9"},
                {"defense": "prune", "strength": "2"}):
        with pytest.raises(ValueError):
            example.defense_cell(example.settings(bad))


@pytest.mark.slow
def test_example_app_runs_a_pruned_audited_round(example, tmp_path: Path) -> None:
    from defense_benchmark import server_app
    from defense_benchmark.client_app import build_client_app
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    overrides = {"num-server-rounds": 1, "num-partitions": 2, "audited-clients": 2, "samples-per-client": 4,
                 "attacks": "inverting-gradients:20 idlg:3", "out-dir": str(tmp_path), "defense": "prune",
                 "strength": "0.99"}
    reports = []
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        reports.append(server_app.run(grid, overrides))

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    try:
        run_simulation(server_app=app, client_app=build_client_app(overrides), num_supernodes=2,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"logging_level": "ERROR", "log_to_driver": False}})
    finally:
        flwr_logger.setLevel(level)
    (record,) = reports[0].rounds
    assert record.accuracy is not None
    # Both clients attacked by the audit's attack, then by iDLG and the adaptive attack on pruning.
    assert sorted(c.attack for c in record.clients) == sorted(
        ["inverting-gradients", "idlg", "inverting-gradients+mask"] * 2)
    assert all(c.status == "ok" for c in record.clients), [c.reason for c in record.clients]
    assert (tmp_path / "prune-0.99-seed0" / "report.jsonl").is_file()
    assert (tmp_path / "prune-0.99-seed0" / "all-attacks.json").is_file()
