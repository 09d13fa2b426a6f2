"""From a client's reply to an audit job, or to the reason there is none.

:func:`take_audit_records` strips the ``audit.*`` records off every reply before the inner strategy
sees them; :func:`audit_job` turns one audited client's reply into an :class:`AuditJob` (the
observation the attack gets, built from the global arrays, the client's arrays and the train
config the server sent; never from originals) or returns the reason the audit is skipped.

Train-config keys read to describe local training to the attack (the public hyper-parameters of
the threat model): ``lr`` (required), ``local-steps``, ``batch-size``, ``momentum``,
``weight-decay``; missing ones default to 1 step, batch size 1, no momentum, no weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import Message
from torch import nn

from semsim_audit.attacks import Observation
from semsim_audit.core import DataSpec
from semsim_audit.strategies.executors import AuditJob
from semsim_audit.strategies.mods import RECORD_KEY, decode_record
from semsim_audit.strategies.rounds import Sent

__all__ = ["AUDIT_PREFIX", "take_audit_records", "audit_job", "client_state"]

AUDIT_PREFIX = "audit."


def take_audit_records(replies: Iterable[Message]) -> dict[int, Any]:
    """Remove every ``audit.*`` record from the replies; return each node's ``audit.record``."""
    records: dict[int, Any] = {}
    for reply in replies:
        if not reply.has_content():
            continue
        for key in [k for k in reply.content.keys() if k.startswith(AUDIT_PREFIX)]:
            taken = reply.content.pop(key)
            if key == RECORD_KEY:
                records[reply.metadata.src_node_id] = taken
    return records


def client_state(reply: Message, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | str:
    """The client's returned weights, checked against the model's state dict; or what is wrong."""
    array_records = list(reply.content.array_records.values())
    if len(array_records) != 1:
        return f"malformed reply: expected one ArrayRecord, found {len(array_records)}"
    try:
        state = array_records[0].to_torch_state_dict()
    except Exception as error:
        return f"malformed reply: arrays unreadable ({error})"
    missing = [name for name in expected if name not in state]
    if missing:
        return f"malformed reply: arrays lack {missing[0]!r} ({len(missing)} missing)"
    for name, tensor in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(tensor.shape):
            return (f"malformed reply: {name!r} has shape {tuple(got.shape)}, "
                    f"the model expects {tuple(tensor.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            return f"malformed reply: {name!r} contains NaN or inf"
    return state


def _num_examples(reply: Message, key: str) -> int | None:
    for record in reply.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value) and value >= 1:
            return int(value)
    return None


def audit_job(server_round: int, node: int, sent: Sent, reply: Message | None, raw_record: Any, *,
              model_fn: Callable[[], nn.Module], data_spec: DataSpec, labels_known: bool,
              examples_key: str = "num-examples") -> AuditJob | str:
    """The audit job of one audited client's reply, or the reason it cannot be audited."""
    if reply is None:
        return "no reply from the client this round"
    if reply.has_error():
        return f"the client replied with an error: {reply.error.reason}"
    if raw_record is None:
        return f"the reply has no {RECORD_KEY!r} (is audit_mod in the ClientApp's mods?)"
    try:
        record = decode_record(raw_record)
    except ValueError as error:
        return f"malformed audit record: {error}"
    if record.images is None or record.labels is None:
        return record.note
    if tuple(record.images.shape[1:]) != data_spec.shape:
        return (f"the client's images have shape {tuple(record.images.shape[1:])}, "
                f"data_spec.shape is {data_spec.shape}")
    state = client_state(reply, model_fn().state_dict())
    if isinstance(state, str):
        return state
    config = sent.config
    if "lr" not in config:
        return "the train config sent has no 'lr': the attack cannot undo local training"
    local_steps = int(config.get("local-steps", 1))
    batch_size = int(config.get("batch-size", 1))
    num_samples = local_steps * batch_size
    num_examples = _num_examples(reply, examples_key)
    if num_examples is not None:
        num_samples = max(1, min(num_samples, num_examples))
    labels = None
    if labels_known:
        labels = record.labels
        num_samples = int(record.labels.shape[0])
    try:
        observation = Observation.from_update(
            model_fn(), sent.arrays.to_torch_state_dict(), state, data_spec, lr=float(config["lr"]),
            local_steps=local_steps, batch_size=batch_size, num_samples=num_samples,
            momentum=float(config.get("momentum", 0.0)),
            weight_decay=float(config.get("weight-decay", 0.0)), labels=labels)
    except ValueError as error:
        return f"malformed update: {error}"
    originals = data_spec.denormalize(record.images).clamp(0.0, 1.0)
    return AuditJob(server_round=server_round, node_id=node, observation=observation,
                    originals=originals, true_labels=record.labels,
                    local_steps=record.local_steps, batch_size=record.batch_size)
