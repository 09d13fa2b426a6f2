"""ClientApp: plain supervised training on the client's shard, behind the audit and defense mods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from defense_benchmark.settings import defense_cell, settings
from semsim_audit.data import load_dataset, partition
from semsim_audit.models import model_for
from semsim_audit.strategies import make_client_app
from semsim_audit.strategies.defenses import defense_mods
from semsim_audit.strategies.mods import audit_mod


class RunSettings:
    """The settings of the message being handled, shared by the mod, the model and the data loader."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self.overrides = dict(overrides or {})
        self.config = settings(self.overrides)

    def select(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """A mod: resolve the run's settings and show them, with the ``defense.*`` keys, to the inner mods."""
        self.config = settings({**context.run_config, **self.overrides})
        _, defense_config = defense_cell(self.config)
        # Flower refuses a Context whose run config changed: show the keys inside, then put it back.
        original = context.run_config
        context.run_config = {**self.config, **defense_config}
        try:
            return call_next(msg, context)
        finally:
            context.run_config = original

    def model(self) -> Any:
        name = str(self.config["model"])
        options = {"uniform_init": True} if name == "lenet" and self.config["uniform-init"] else {}
        return model_for(name, load_dataset(str(self.config["dataset"])).spec, **options)

    def shard(self, context: Context) -> Any:
        """The client's IID shard of the training split, chosen by its ``partition-id``."""
        data = load_dataset(str(self.config["dataset"]), train=True)
        count = int(context.node_config.get("num-partitions", self.config["num-partitions"]))  # type: ignore[arg-type]
        shards = partition(data, count, "iid", seed=int(self.config["seed"]))
        index = int(context.node_config["partition-id"])  # type: ignore[arg-type]
        return data.subset(shards[index][: int(self.config["samples-per-client"])])


def build_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` stand in for a run config (tests and run_simulation have none)."""
    run = RunSettings(overrides)
    # Outermost first: the settings (which audit_mod reads too), then audit_mod, which so sees the
    # reply after every defense has run, then the defenses.
    return make_client_app(run.model, run.shard, mods=[run.select, audit_mod, *defense_mods()], audit=False)


app = build_client_app()
