"""One call that runs an audited Flower simulation and returns the report.

It uses Flower's real Simulation Engine (``flwr.simulation.run_simulation``, Ray backend): a
ServerApp running ``AuditedFedAvg`` with a central evaluation on the test split, and the
ready-made ClientApp (an ``AuditedClientApp``). The data is a built-in dataset by name or any
map-style dataset of ``(image, label)``; the model a name or the user's own ``model_fn``. Client
mods run in this order, outermost first::

    run-config mod -> audit_mod -> *client_mods (defenses) -> train

The run-config mod puts ``run_config`` into every client's ``context.run_config`` (Flower's
Python simulation API has no other way to pass it); ``audit_mod`` is outside the defenses, so
the reply the server receives, and attacks, is the defended update (see :mod:`semsim_audit.strategies.mods`).
Scoring happens on the clients; their run config opts in to exporting the paired originals
(``audit-export-originals``) so that the report can show them beside the reconstructions.
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
from torch import nn
from torch.utils.data import Dataset, Subset

from semsim_audit.config import AuditConfig
from semsim_audit.core import DataSpec, seed_everything
from semsim_audit.data import load_dataset, partition_dirichlet, partition_iid
from semsim_audit.models import model_for
from semsim_audit.report import PrivacyReport, ReportSink
from semsim_audit.strategies.audited import AuditedFedAvg
from semsim_audit.strategies.client import evaluate_model, make_client_app
from semsim_audit.strategies.executors import Executor, RayExecutor
from semsim_audit.strategies.mods import audit_mod
from semsim_audit.strategies.protocol import EXPORT_ORIGINALS_KEY

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


def _user_dataset(dataset: Any, data_spec: DataSpec | None, what: str) -> tuple[Any, DataSpec]:
    """A user's map-style dataset of (image, label) and its spec, checked on its first item."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ValueError(f"{what} must be a dataset name or a map-style dataset of (image, label), "
                         f"got {type(dataset).__name__}")
    spec = data_spec if data_spec is not None else getattr(dataset, "spec", None)
    if not isinstance(spec, DataSpec):
        raise ValueError(f"{what} has no `spec` (a semsim_audit.DataSpec): pass data_spec=DataSpec(...)")
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty")
    try:
        image, label = dataset[0]
    except Exception as error:
        raise ValueError(f"{what}[0] is not an (image, label) pair: {error}") from None
    if not isinstance(image, torch.Tensor) or tuple(image.shape) != tuple(spec.shape):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what}[0]'s image is {shape}, data_spec.shape is {spec.shape} "
                         "(expected a normalised tensor)")
    if not 0 <= int(label) < spec.num_classes:
        raise ValueError(f"{what}[0]'s label {label!r} is outside the spec's {spec.num_classes} classes")
    return dataset, spec


def _labels(dataset: Any) -> list[int]:
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(t) for t in targets]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _shards(dataset: Any, num_clients: int, scheme: str, alpha: float, seed: int) -> list[Any]:
    if scheme == "iid":
        return partition_iid(len(dataset), num_clients, seed)
    if scheme == "dirichlet":
        return partition_dirichlet(_labels(dataset), num_clients, alpha, seed)
    raise ValueError(f"unknown partition scheme {scheme!r}; use 'iid' or 'dirichlet'")


def run_audited_simulation(*, dataset: str | Dataset = "photos",
                           model: str | Callable[[], nn.Module] = "convnet",
                           model_options: Mapping[str, Any] | None = None, num_clients: int = 4,
                           rounds: int = 3, fraction_train: float = 1.0, local_steps: int = 1,
                           batch_size: int = 1, lr: float = 0.01, partition: str = "iid",
                           alpha: float = 0.5, seed: int = 0, audit: AuditConfig,
                           sinks: Sequence[ReportSink] = (), client_mods: Sequence[Mod] = (),
                           run_config: Mapping[str, Any] | None = None,
                           backend_config: Mapping[str, Any] | None = None,
                           samples_per_client: int | None = None,
                           wrap_strategy: Callable[[Strategy], Strategy] | None = None,
                           data_spec: DataSpec | None = None,
                           test_dataset: Dataset | None = None,
                           executor: Executor | None = None) -> PrivacyReport:
    """Run an audited FedAvg simulation and return its PrivacyReport (also on disk with out_dir).

    Parameters
    ----------
    dataset : str or Dataset
        A built-in dataset by name (``load_dataset``; its test split evaluates), or a map-style
        dataset of ``(image, label)`` with images normalised as ``spec`` says, where ``spec`` is
        the dataset's ``spec`` attribute or ``data_spec``. ``test_dataset`` evaluates the global
        model; without it the accuracy is measured on ``dataset`` itself (the report says so).
    model : str or Callable[[], nn.Module]
        A victim model by name (with ``model_options``), or your own ``model_fn`` (picklable with
        cloudpickle: Ray ships it to the clients).
    wrap_strategy : Callable, optional
        Wraps the inner FedAvg inside the audit (e.g. Flower's client-side DP wrapper,
        ``semsim_audit.strategies.defenses.dp_fixed_strategy``): the audit sees the replies before
        that wrapper does.
    executor : Executor, optional
        Where the audit's attacks run, in place of the one ``audit.executor`` names (the defense sweep
        passes one that also runs its other attacks on the same observations).
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

    evaluation = "test split"
    if isinstance(dataset, str):
        if data_spec is not None or test_dataset is not None:
            raise ValueError("data_spec and test_dataset go with a dataset object, not a dataset name")
        train_set = load_dataset(dataset, train=True)
        test_set = load_dataset(dataset, train=False)
        spec = train_set.spec  # type: ignore[attr-defined]
    else:
        train_set, spec = _user_dataset(dataset, data_spec, "dataset")
        if test_dataset is not None:
            test_set, _ = _user_dataset(test_dataset, spec, "test_dataset")
        else:
            test_set, evaluation = train_set, "the training dataset (no test_dataset given)"
    shards = _shards(train_set, num_clients, partition, alpha, seed)
    if samples_per_client is not None:
        shards = [shard[:samples_per_client] for shard in shards]
    if isinstance(model, str):
        model_fn: Callable[[], nn.Module] = _ModelFactory(model, spec, model_options or {})
    elif callable(model):
        if model_options:
            raise ValueError("model_options go with a model name, not with your own model_fn")
        model_fn = model
    else:
        raise ValueError(f"model must be a model name or a callable returning an nn.Module, "
                         f"got {type(model).__name__}")
    built = model_fn()  # an unknown model name or option fails here, before Ray starts
    if not isinstance(built, nn.Module):
        raise ValueError(f"model() must return a torch.nn.Module, got {type(built).__name__}")
    seed_everything(seed)
    initial_arrays = ArrayRecord(model_fn().state_dict())

    backend: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v
                               for k, v in (backend_config or {}).items()}
    backend.setdefault("client_resources", {"num_cpus": 1, "num_gpus": 0.0})
    init_args = backend.setdefault("init_args", {})
    init_args.setdefault("logging_level", "ERROR")
    init_args.setdefault("log_to_driver", False)
    init_args.setdefault("include_dashboard", False)
    if executor is None and audit.executor == "ray" and audit.ray_address is None:
        init_args.setdefault("resources", {AUDIT_RESOURCE: 1})
        executor = RayExecutor(num_cpus=0, num_gpus=audit.ray_num_gpus, batch=audit.batch_jobs,
                               resources={AUDIT_RESOURCE: 1})

    min_train = max(1, int(num_clients * fraction_train))
    # Replies in partition order: the same seed then aggregates to the same bits, whatever order
    # Ray's workers answered in.
    strategy = AuditedFedAvg(model_fn=model_fn, data_spec=spec, audit=audit, executor=executor,
                             sinks=sinks, reply_order="stable-key", fraction_train=fraction_train,
                             fraction_evaluate=0.0, min_train_nodes=min_train, min_evaluate_nodes=0,
                             min_available_nodes=num_clients)
    if wrap_strategy is not None:
        strategy.strategy = wrap_strategy(strategy.strategy)
    strategy.report.config["evaluated_on"] = evaluation

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
