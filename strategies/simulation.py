"""One call that runs an audited Flower simulation on a built-in dataset and returns the report.

It uses Flower's real Simulation Engine (``flwr.simulation.run_simulation``, Ray backend): a
ServerApp running ``AuditedFedAvg`` with a central evaluation on the dataset's test split, and
the ready-made ClientApp. Client mods run in this order, outermost first::

    run-config mod -> audit_mod -> *client_mods (defenses) -> train

The run-config mod puts ``run_config`` into every client's ``context.run_config`` (Flower's
Python simulation API has no other way to pass it); ``audit_mod`` is outside the defenses, so
the reply the server receives, and attacks, is the defended update (see :mod:`semsim_audit.strategies.mods`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from torch.utils.data import Subset

from semsim_audit.config import AuditConfig
from semsim_audit.core import seed_everything
from semsim_audit.data import load_dataset
from semsim_audit.data import partition as partition_dataset
from semsim_audit.models import model_for
from semsim_audit.report import PrivacyReport, ReportSink
from semsim_audit.strategies.audited import AuditedFedAvg
from semsim_audit.strategies.client import evaluate_model, make_client_app
from semsim_audit.strategies.executors import RayExecutor
from semsim_audit.strategies.mods import EXPORT_ORIGINALS_KEY, audit_mod

__all__ = ["run_audited_simulation", "RunConfigMod"]

# A custom Ray resource for audit tasks: Flower's actor pool claims every CPU, so an audit task
# asking for CPUs would never be scheduled inside a simulation. No "-" in the name: Flower turns
# "-" into "_" in every backend-config key, nested ones included.
AUDIT_RESOURCE = "semsim_audit"


class RunConfigMod:
    """A mod that shows the mods and the app inside it ``values`` in ``context.run_config``.

    Entries already in the run config win. Flower refuses a Context whose run config changed,
    so the original is put back once the message is handled. Picklable, for Ray actors.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        original = context.run_config
        context.run_config = {**self.values, **original}
        try:
            return call_next(msg, context)
        finally:
            context.run_config = original


class _Partitions:
    """Loads a client's shard by its ``partition-id`` (picklable, for Ray actors)."""

    def __init__(self, dataset: Any, shards: Sequence[Sequence[int]]) -> None:
        self.dataset = dataset
        self.shards = [list(map(int, shard)) for shard in shards]

    def __call__(self, context: Context) -> Any:
        index = int(context.node_config["partition-id"])  # type: ignore[arg-type]
        shard = self.shards[index]
        subset = getattr(self.dataset, "subset", None)
        return subset(shard) if subset is not None else Subset(self.dataset, shard)


class _ModelFactory:
    def __init__(self, name: str, spec: Any, options: Mapping[str, Any]) -> None:
        self.name, self.spec, self.options = name, spec, dict(options)

    def __call__(self) -> torch.nn.Module:
        return model_for(self.name, self.spec, **self.options)


def _check(name: str, value: float, minimum: float, *, integer: bool = True) -> None:
    if (integer and (isinstance(value, bool) or int(value) != value)) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum}, got {value!r}")


def run_audited_simulation(*, dataset: str = "photos", model: str = "convnet",
                           model_options: Mapping[str, Any] | None = None, num_clients: int = 4,
                           rounds: int = 3, fraction_train: float = 1.0, local_steps: int = 1,
                           batch_size: int = 1, lr: float = 0.01, partition: str = "iid",
                           alpha: float = 0.5, seed: int = 0, audit: AuditConfig,
                           sinks: Sequence[ReportSink] = (), client_mods: Sequence[Mod] = (),
                           run_config: Mapping[str, Any] | None = None,
                           backend_config: Mapping[str, Any] | None = None,
                           samples_per_client: int | None = None,
                           wrap_strategy: Callable[[Strategy], Strategy] | None = None) -> PrivacyReport:
    """Run an audited FedAvg simulation and return its PrivacyReport (also on disk with out_dir).

    ``wrap_strategy`` wraps the inner FedAvg inside the audit (e.g. Flower's client-side DP wrapper,
    ``semsim_audit.strategies.defenses.dp_fixed_strategy``): the audit sees the replies before that
    wrapper does.
    """
    from flwr.simulation import run_simulation  # pulls in Ray: seconds, so only when a simulation runs

    # Ray warns about a future default on every start; the simulation sets num_gpus explicitly.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

    _check("num_clients", num_clients, 1)
    _check("rounds", rounds, 1)
    _check("local_steps", local_steps, 1)
    _check("batch_size", batch_size, 1)
    if not 0.0 < fraction_train <= 1.0:
        raise ValueError(f"fraction_train must lie in (0, 1], got {fraction_train!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if samples_per_client is not None:
        _check("samples_per_client", samples_per_client, 1)
    if not isinstance(audit, AuditConfig):
        raise ValueError(f"audit must be an AuditConfig, got {type(audit).__name__}")

    train_set = load_dataset(dataset, train=True)
    test_set = load_dataset(dataset, train=False)
    spec = train_set.spec  # type: ignore[attr-defined]
    shards = partition_dataset(train_set, num_clients, partition, alpha, seed)
    if samples_per_client is not None:
        shards = [shard[:samples_per_client] for shard in shards]
    model_fn = _ModelFactory(model, spec, model_options or {})
    model_fn()  # an unknown model name or option fails here, before Ray starts
    seed_everything(seed)
    initial_arrays = ArrayRecord(model_fn().state_dict())

    executor = None
    backend: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v
                               for k, v in (backend_config or {}).items()}
    backend.setdefault("client_resources", {"num_cpus": 1, "num_gpus": 0.0})
    init_args = backend.setdefault("init_args", {})
    init_args.setdefault("logging_level", "ERROR")
    init_args.setdefault("log_to_driver", False)
    init_args.setdefault("include_dashboard", False)
    if audit.executor == "ray" and audit.ray_address is None:
        init_args.setdefault("resources", {AUDIT_RESOURCE: 1})
        executor = RayExecutor(num_cpus=0, num_gpus=audit.ray_num_gpus, batch=audit.batch_jobs,
                               resources={AUDIT_RESOURCE: 1})

    min_train = max(1, int(num_clients * fraction_train))
    strategy = AuditedFedAvg(model_fn=model_fn, data_spec=spec, audit=audit, executor=executor,
                             sinks=sinks, fraction_train=fraction_train, fraction_evaluate=0.0,
                             min_train_nodes=min_train, min_evaluate_nodes=0,
                             min_available_nodes=num_clients)
    if wrap_strategy is not None:
        strategy.strategy = wrap_strategy(strategy.strategy)

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluated = model_fn()
        evaluated.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate_model(evaluated, test_set)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    train_config = ConfigRecord({"lr": float(lr), "local-steps": int(local_steps),
                                 "batch-size": int(batch_size)})
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=rounds,
                       train_config=train_config, evaluate_fn=central_evaluation)

    client_config = {EXPORT_ORIGINALS_KEY: True, "seed": seed, **dict(run_config or {})}
    client_app = make_client_app(
        model_fn, _Partitions(train_set, shards),
        mods=[RunConfigMod(client_config), audit_mod, *client_mods], audit=False)

    # Flower logs every step at INFO and warns that run_simulation is deprecated; the report
    # sinks say what matters, so only errors from Flower reach the console.
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                       backend_name="ray", backend_config=backend)  # type: ignore[arg-type]
    finally:
        flwr_logger.setLevel(level)
        if not strategy.finished:  # the ServerApp never reached the end (e.g. Ray failed to start)
            strategy.finish(timeout=0.0)
    return strategy.report
