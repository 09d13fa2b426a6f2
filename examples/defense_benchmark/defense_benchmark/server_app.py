"""ServerApp: audited FedAvg (wrapped in Flower's client-side DP when the defense is dp-fixed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from defense_benchmark.settings import defense_cell, settings
from semsim_audit.config import AuditConfig
from semsim_audit.core import seed_everything
from semsim_audit.data import load_dataset
from semsim_audit.models import model_for
from semsim_audit.report import LogSink, PrivacyReport
from semsim_audit.strategies import AuditedStrategy
from semsim_audit.strategies.client import evaluate_model
from semsim_audit.strategies.defenses import dp_fixed_strategy


def run(grid: Grid, config: Mapping[str, Any]) -> PrivacyReport:
    """Train and audit one defense for ``num-server-rounds``; the report goes to ``out-dir/<cell>``."""
    config = settings(config)
    cell, defense_config = defense_cell(config)
    train_set, test_set = (load_dataset(str(config["dataset"]), train=split) for split in (True, False))

    def model_fn() -> Any:
        return model_for(str(config["model"]), train_set.spec)

    clients = int(config["num-partitions"])
    inner = dp_fixed_strategy(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                                     min_evaluate_nodes=0, min_available_nodes=clients),
                              defense_config, clients)
    audit = AuditConfig(attack=str(config["attack"]), attack_config={"iterations": int(config["iterations"])},
                        clients=int(config["audited-clients"]), seed=cell.seed,
                        out_dir=Path(str(config["out-dir"])) / cell.cell_id)
    strategy = AuditedStrategy(inner, model_fn=model_fn, data_spec=train_set.spec, audit=audit,
                               sinks=[LogSink()])

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
    return strategy.report


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, context.run_config)
