"""A real audited run, in process: Flower's FedAvg behind AuditedStrategy, the clients of
``make_client_app`` on the embedded photos, real attacks, scoring on the clients, a run folder.

The task (``Setup``) is the one of the Flower integration tests; a small untrained SemSim judges,
so the scores mean nothing but every path runs, in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import FedAvg
from module_files import load_module  # tests/module_files.py

from semsim_audit.config import AuditConfig
from semsim_audit.data import load_dataset
from semsim_audit.report import PrivacyReport
from semsim_audit.strategies import AuditedStrategy, make_client_app
from semsim_audit.strategies.client import evaluate_model
from semsim_audit.strategies.local import InProcessGrid, set_task_identity

audit_apps = load_module(Path(__file__).parents[1] / "strategies" / "audit_apps.py", "views_audit_apps")


def _judge() -> Any:
    """An untrained SemSim with a threshold and a borderline band (so borderline counts are known)."""
    from semsim_audit.semsim import CheckpointMetadata, SemSim, SemSimNet

    torch.manual_seed(0)
    metadata = CheckpointMetadata(threshold=0.5, annotator="proxy", data="untrained test network", width=8,
                                  embedding_dim=64, borderline_band=(0.3, 0.7))
    return SemSim(SemSimNet(width=8), metadata, device="cpu")


def run_audited(run_dir: Path, sinks: Sequence[Any] = (), rounds: int = 2) -> PrivacyReport:
    """Two clients, both audited every round, two images each; images saved into ``run_dir``."""
    saved = set_task_identity()  # flwr stamps new Messages with the running task's identity
    try:
        setup = audit_apps.Setup(load_dataset("photos", train=True))
        audit = AuditConfig(attack="inverting-gradients", attack_config={"iterations": 2}, clients=2,
                            out_dir=run_dir, save_images=True)
        inner = FedAvg(fraction_evaluate=0.0, min_evaluate_nodes=0)
        strategy = AuditedStrategy(inner, model_fn=setup.model_fn, data_spec=setup.spec, audit=audit,
                                   semsim=_judge(), sinks=sinks)
        grid = InProcessGrid(make_client_app(setup.model_fn, setup.load_partition), 2,
                             {"audit-export-originals": True})

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = setup.model_fn()
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, accuracy = evaluate_model(model, setup.partitions[0])
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        random.seed(0)  # FedAvg samples with the global `random`
        torch.manual_seed(0)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(setup.model_fn().state_dict()),
                       num_rounds=rounds, train_config=ConfigRecord({"lr": 0.1, "batch-size": 2}),
                       evaluate_fn=evaluate)
    finally:
        set_task_identity(*saved)
    return strategy.report
