"""The tiny federated task of these tests, and a ClientApp shaped like Flower's PyTorch template.

A module of its own (not conftest.py) so that test modules can import it by name, and picklable,
so that Ray ships it to the Simulation Engine's actors.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader

from semsim_audit.data import partition
from semsim_audit.models import model_for
from semsim_audit.strategies import AuditedClientApp, audit_mod, record_batch
from semsim_audit.strategies.client import evaluate_model


class Setup:
    """A tiny federated task: LeNet on 'photos', a few images per client."""

    def __init__(self, photos: Any, num_nodes: int = 2, per_client: int = 4) -> None:
        self.spec = photos.spec
        shards = partition(photos, num_nodes, "iid", seed=0)
        self.partitions = [photos.subset(shard[:per_client]) for shard in shards]

    def model_fn(self) -> torch.nn.Module:
        return model_for("lenet", self.spec)

    def load_partition(self, context: Context) -> Any:
        return self.partitions[int(context.node_config["partition-id"])]


class TemplateClient:
    """A client shaped like Flower's PyTorch template (``flwr new``): the server sends only ``lr``;
    the client reads ``local-epochs`` from its run config and trains every mini-batch of its
    partition that many epochs (SGD here, so the attack's model of local training holds), calling
    ``record_batch`` on each. Picklable, for Ray actors.
    """

    def __init__(self, setup: Setup, batch_size: int = 2) -> None:
        self.setup = setup
        self.batch_size = batch_size

    def train(self, msg: Message, context: Context) -> Message:
        model = self.setup.model_fn()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        data = self.setup.load_partition(context)
        server_round = int(msg.content["config"].get("server-round", 0))
        seed = server_round * 100 + int(context.node_config["partition-id"])
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        optimizer = torch.optim.SGD(model.parameters(), lr=float(msg.content["config"]["lr"]))
        for _ in range(int(context.run_config["local-epochs"])):
            for images, labels in loader:
                record_batch(images, labels)
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(images), labels).backward()
                optimizer.step()
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(data)})})
        return Message(content=content, reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        model = self.setup.model_fn()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        data = self.setup.load_partition(context)
        loss, accuracy = evaluate_model(model, data)
        metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(data)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    def app(self, kind: str, mods: list | None = None) -> ClientApp:
        """``kind``: "plain" (no audit), "mod" (``ClientApp(mods=[audit_mod])``) or "audited"."""
        mods = list(mods or [])
        if kind == "audited":
            app = AuditedClientApp(mods=mods)
        else:
            app = ClientApp(mods=[audit_mod, *mods] if kind == "mod" else mods)
        app.train()(self.train)
        app.evaluate()(self.evaluate)
        return app
