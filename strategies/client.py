"""Audited ClientApps: :class:`AuditedClientApp`, and a ready-made one for supervised training.

``AuditedClientApp`` is Flower's ``ClientApp`` with the audit built in: ``audit_mod`` first in its
mods, and the scoring handler registered, so the server's reconstructions are scored on this
client as soon as they are ready (see :mod:`semsim_audit.strategies.protocol`).

:func:`make_client_app`'s train handler reads the server's train config (``lr``, ``local-steps``,
``batch-size``, ``momentum``, ``weight-decay``: the keys ``AuditedStrategy`` describes to the
attack), runs that many SGD steps on the client's partition, and calls :func:`record_batch` on
every batch. Its evaluate handler reports ``loss`` and ``accuracy`` on the client's evaluation
split (its training data when none is given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import ClientFnExt
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import nn
from torch.utils.data import DataLoader, Dataset

from semsim_audit.strategies.mods import audit_mod, record_batch, scoring_handler
from semsim_audit.strategies.protocol import SCORING_ACTION

__all__ = ["AuditedClientApp", "make_client_app", "train_locally", "evaluate_model"]


def _not_reached(msg: Message, context: Context) -> Message:
    raise RuntimeError("a scoring request reached the ClientApp's handler: audit_mod is not among its mods")


class AuditedClientApp(ClientApp):
    """Flower's ``ClientApp`` with the privacy audit: use it in place of ``ClientApp``.

    ``audit_mod`` is added as the first (outermost) mod unless ``mods`` already place it; the
    ``query.semsim_audit`` message type is registered so that Flower, which routes by registered
    type before any mod runs, hands the server's scoring requests to ``audit_mod``. Register
    ``@app.train()`` and ``@app.evaluate()`` as usual and call :func:`record_batch` in the train loop.
    """

    def __init__(self, client_fn: ClientFnExt | None = None, mods: list[Mod] | None = None) -> None:
        mods = list(mods or [])
        if audit_mod not in mods:
            mods.insert(0, audit_mod)
        super().__init__(client_fn, mods)
        if client_fn is None:  # a client_fn app sends every message through its mods already
            self.query(SCORING_ACTION)(_not_reached)

    def __call__(self, message: Message, context: Context) -> Message:
        """Handle a message; audit_mod tells the server that this app answers scoring queries."""
        token = scoring_handler.set(True)
        try:
            return super().__call__(message=message, context=context)
        finally:
            scoring_handler.reset(token)

Partition = Dataset | tuple[Dataset, Dataset | None]


def _batches(data: Dataset, batch_size: int, generator: torch.Generator) -> Any:
    """Endless shuffled batches: local steps may outnumber one epoch's batches."""
    while True:
        yield from DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)


def train_locally(model: nn.Module, data: Dataset, *, lr: float, local_steps: int = 1,
                  batch_size: int = 1, momentum: float = 0.0, weight_decay: float = 0.0,
                  seed: int = 0, device: torch.device | str = "cpu") -> tuple[float, int]:
    """Run ``local_steps`` SGD steps; return (mean loss, distinct examples seen at most)."""
    if len(data) == 0:  # type: ignore[arg-type]
        raise ValueError("the client's partition is empty")
    model.to(device).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    batches = _batches(data, batch_size, generator)
    for _ in range(local_steps):
        images, labels = next(batches)
        record_batch(images, labels)  # what the model consumes; kept only when audited
        images, labels = images.to(device), labels.to(device)
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimiser.step()
        total += float(loss.detach())
    return total / local_steps, min(len(data), local_steps * batch_size)  # type: ignore[arg-type]


@torch.no_grad()
def evaluate_model(model: nn.Module, data: Dataset, *, batch_size: int = 64,
                   device: torch.device | str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``data``."""
    model.to(device).eval()
    loss, correct, count = 0.0, 0, 0
    for images, labels in DataLoader(data, batch_size=batch_size):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += int(labels.shape[0])
    if count == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return loss / count, correct / count


def _split(partition: Partition) -> tuple[Dataset, Dataset]:
    if isinstance(partition, tuple):
        train, evaluation = partition
        return train, evaluation if evaluation is not None else train
    return partition, partition


def make_client_app(model_fn: Callable[[], nn.Module], load_partition: Callable[[Context], Partition], *,
                    mods: Sequence[Mod] = (), audit: bool = True, device: str = "cpu") -> ClientApp:
    """A ClientApp training ``model_fn()`` on ``load_partition(context)`` (a dataset, or (train, eval)).

    With ``audit`` (the default) it is an :class:`AuditedClientApp`: ``mods`` (e.g. defenses) run
    inside ``audit_mod``, which is added first (outermost; see :mod:`semsim_audit.strategies.mods`
    for why) unless ``mods`` place it themselves. ``audit=False`` with no ``audit_mod`` in ``mods``
    builds a plain ``ClientApp``.
    """
    audited = audit or audit_mod in mods
    app = AuditedClientApp(mods=list(mods)) if audited else ClientApp(mods=list(mods))

    def load_model(msg: Message) -> tuple[nn.Module, str]:
        record_key, arrays = next(iter(msg.content.array_records.items()))
        model = model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        return model, record_key

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model, record_key = load_model(msg)
        config: dict[str, Any] = {}
        for record in msg.content.config_records.values():
            config.update(record.items())
        server_round = int(config.get("server-round", 0))
        node = int(context.node_config.get("partition-id", context.node_id))  # type: ignore[arg-type]
        seed = int(context.run_config.get("seed", 0)) * 1_000_003 + server_round * 997 + node
        train_data, _ = _split(load_partition(context))
        loss, examples = train_locally(
            model, train_data, lr=float(config.get("lr", 0.01)),
            local_steps=int(config.get("local-steps", 1)), batch_size=int(config.get("batch-size", 1)),
            momentum=float(config.get("momentum", 0.0)),
            weight_decay=float(config.get("weight-decay", 0.0)), seed=seed, device=device)
        model.to("cpu")
        content = RecordDict({
            record_key: ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": examples}),
        })
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        model, _ = load_model(msg)
        _, eval_data = _split(load_partition(context))
        loss, accuracy = evaluate_model(model, eval_data, device=device)
        metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(eval_data)})  # type: ignore[arg-type]
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app
