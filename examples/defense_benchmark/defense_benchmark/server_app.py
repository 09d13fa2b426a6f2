"""ServerApp: audited FedAvg (wrapped in Flower's client-side DP when the defense is dp-fixed).

The audit attacks with the cell's first attack; the sweep's executor runs the others on the same
updates. At the end the app prints the table of ``semsim-audit bench`` for this one cell.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from rich.console import Console

from defense_benchmark.settings import attacks, defense_cell, settings
from semsim_audit.bench import (
    SweepExecutor,
    aggregate,
    attacks_table,
    result_from_report,
    results_table,
    with_other_attacks,
)
from semsim_audit.config import AuditConfig
from semsim_audit.core import seed_everything
from semsim_audit.data import load_dataset
from semsim_audit.models import model_for
from semsim_audit.report import LogSink, PrivacyReport
from semsim_audit.strategies import AuditedStrategy
from semsim_audit.strategies.client import evaluate_model
from semsim_audit.strategies.defenses import dp_fixed_strategy


def run(grid: Grid, config: Mapping[str, Any]) -> PrivacyReport:
    """Train and audit one defense for ``num-server-rounds``; the report goes to ``out-dir/<cell>``.

    Returns the report with every attack's audits; the one the audit wrote is in the cell's folder.
    """
    started = time.monotonic()
    config = settings(config)
    cell, defense_config = defense_cell(config)
    first, *others = attacks(config, cell)
    iterations = int(config["iterations"])
    train_set, test_set = (load_dataset(str(config["dataset"]), train=split) for split in (True, False))
    options = {"uniform_init": True} if config["model"] == "lenet" and config["uniform-init"] else {}

    def model_fn() -> Any:
        return model_for(str(config["model"]), train_set.spec, **options)

    clients = int(config["num-partitions"])
    inner = dp_fixed_strategy(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                                     min_evaluate_nodes=0, min_available_nodes=clients),
                              defense_config, clients)
    folder = Path(str(config["out-dir"])) / cell.cell_id
    # The other attacks are scored against the originals the clients export with their first scores,
    # which the run folder keeps as images.
    audit = AuditConfig(attack=first.attack, attack_config=first.config(iterations, 1).explicit(),
                        clients=int(config["audited-clients"]), every=int(config["audit-every"]),
                        seed=cell.seed, out_dir=folder, save_images=bool(others))
    executor = SweepExecutor({a.label: (a.attack, a.config(iterations, 1, seed=cell.seed)) for a in others})
    strategy = AuditedStrategy(inner, model_fn=model_fn, data_spec=train_set.spec, audit=audit,
                               executor=executor, sinks=[LogSink()])

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate_model(model, test_set)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    seed_everything(cell.seed)
    train_config = ConfigRecord({"lr": float(config["lr"]), "local-steps": int(config["local-steps"]),
                                 "batch-size": int(config["batch-size"])})
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model_fn().state_dict()),
                   num_rounds=int(config["num-server-rounds"]), train_config=train_config,
                   evaluate_fn=central_evaluation)
    report = with_other_attacks(strategy.report, executor, folder, strategy.semsim, label=first.label)
    rows = aggregate([result_from_report(cell, report, time.monotonic() - started)])
    console = Console()
    console.print(results_table(rows, title=f"Defense benchmark: {cell.label}, seed {cell.seed}"))
    console.print(attacks_table(rows))
    return report


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, context.run_config)
