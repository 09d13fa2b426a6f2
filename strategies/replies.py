"""From a client's reply to an audit job, or to the reason there is none.

:func:`take_audit_records` strips the ``audit.*`` records off every reply before the inner strategy
sees them; :func:`audit_job` turns one audited client's reply into an :class:`AuditJob` (the
observation the attack gets, built from the global arrays, the client's arrays and the training
attacked; never from originals, which stay on the client) or returns the reason the audit is
skipped.

The training attacked (:func:`attacked_training`): the client's record says what it ran (its local
step count and batch size, as ``record_batch`` saw them); the server declares what it asked for,
from its train config (``local-steps``, ``batch-size``) or, when that does not say, from the run
config (``AuditConfig.local_steps``, or ``local_epochs`` x ceil(num-examples / ``local_batch_size``)).
``lr`` comes from the train config (or ``AuditConfig.lr``); ``momentum`` and ``weight-decay`` from
the train config, default 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord, Message
from torch import nn

from semsim_audit.attacks import Observation
from semsim_audit.config import AuditConfig
from semsim_audit.core import DataSpec
from semsim_audit.strategies.executors import AuditJob
from semsim_audit.strategies.protocol import KEY_RECORD_KEY, RECORD_KEY, AuditRecord, decode_record
from semsim_audit.strategies.rounds import Sent

__all__ = ["AUDIT_PREFIX", "take_audit_records", "audit_job", "attacked_training", "client_state",
           "stable_key"]

AUDIT_PREFIX = "audit."


def take_audit_records(replies: Iterable[Message]) -> dict[int, dict[str, Any]]:
    """Remove every ``audit.*`` record from the replies; return them by node, then by key."""
    records: dict[int, dict[str, Any]] = {}
    for reply in replies:
        if not reply.has_content():
            continue
        for key in [k for k in reply.content.keys() if k.startswith(AUDIT_PREFIX)]:
            records.setdefault(reply.metadata.src_node_id, {})[key] = reply.content.pop(key)
    return records


def stable_key(node_records: dict[str, Any], node: int) -> str:
    """The key a client reports in its audit record (its partition id in a simulation), else its node id."""
    try:
        key = decode_record(node_records[RECORD_KEY]).key
    except (KeyError, ValueError):
        key = ""
    if not key:  # a round this client was not asked to capture: the key travels alone
        record = node_records.get(KEY_RECORD_KEY)
        value = record.get("key") if isinstance(record, ConfigRecord) else None
        key = value if isinstance(value, str) else ""
    return key or f"node-{node}"


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


def _declared_int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        return None
    return int(value)


def attacked_training(record: AuditRecord, config: Mapping[str, Any], audit: AuditConfig,
                      num_examples: int | None) -> tuple[int, int, str | None] | str:
    """(local steps, batch size, note) of the training to attack, or the reason not to attack.

    ``config`` is the train config the server sent, ``num_examples`` the client's reported count.
    """
    if record.local_steps < 1:
        return record.note or "the train loop called record_batch on no batch"
    batch, batch_from = _declared_int(config, "batch-size"), "train config 'batch-size'"
    if batch is None and audit.local_batch_size is not None:
        batch, batch_from = audit.local_batch_size, "run config 'batch-size'"
    steps, steps_from = _declared_int(config, "local-steps"), "train config 'local-steps'"
    if steps is None and audit.local_steps is not None:
        steps, steps_from = audit.local_steps, "run config 'local-steps'"
    if steps is None and audit.local_epochs is not None and batch is not None and num_examples is not None:
        steps = audit.local_epochs * math.ceil(num_examples / batch)
        steps_from = (f"run config 'local-epochs' {audit.local_epochs} x ceil({num_examples} examples / "
                      f"batch size {batch})")
    mismatches = [f"{what}: declared {declared} ({source}), observed {observed}"
                  for what, declared, source, observed in (
                      ("local steps", steps, steps_from, record.local_steps),
                      ("batch size", batch, batch_from, record.batch_size))
                  if declared is not None and declared != observed]
    undeclared = [what for what, declared in (("local steps", steps), ("batch size", batch))
                  if declared is None]
    if audit.training == "declared":
        if undeclared:
            return (f"audit training='declared' but the server declares no {' and no '.join(undeclared)}: "
                    "set 'local-steps' and 'batch-size' in the train config, or 'local-epochs' and "
                    "'batch-size' in the run config")
        if mismatches:
            return f"the client trained otherwise than declared ({'; '.join(mismatches)}); not attacked"
        return steps, batch, None  # type: ignore[return-value]
    note = None
    if mismatches:
        note = f"attacked the training the client recorded, not the declared one ({'; '.join(mismatches)})"
    elif undeclared:
        note = (f"the server declares no {' and no '.join(undeclared)}; attacked what the client recorded "
                f"({record.local_steps} steps of batch {record.batch_size})")
    return record.local_steps, record.batch_size, note


def audit_job(server_round: int, node: int, sent: Sent, reply: Message | None, records: Mapping[str, Any], *,
              model_fn: Callable[[], nn.Module], data_spec: DataSpec, audit: AuditConfig,
              examples_key: str = "num-examples") -> AuditJob | str:
    """The audit job of one audited client's reply, or the reason it cannot be audited."""
    if reply is None:
        return "no reply from the client this round"
    if reply.has_error():
        return f"the client replied with an error: {reply.error.reason}"
    raw_record = records.get(RECORD_KEY)
    if raw_record is None:
        return (f"the reply has no {RECORD_KEY!r}: the ClientApp needs audit_mod (build it with "
                "semsim_audit.strategies.AuditedClientApp, or add audit_mod first in its mods)")
    try:
        record = decode_record(raw_record)
    except ValueError as error:
        return f"malformed audit record: {error}"
    if record.kept_images < 1:
        return record.note or "the client kept no images to score against"
    state = client_state(reply, model_fn().state_dict())
    if isinstance(state, str):
        return state
    config = sent.config
    lr = config.get("lr", audit.lr)
    if not isinstance(lr, int | float) or isinstance(lr, bool):
        return ("the train config sent has no 'lr' (nor does the run config): the attack cannot undo "
                "local training")
    training = attacked_training(record, config, audit, _num_examples(reply, examples_key))
    if isinstance(training, str):
        return training
    local_steps, batch_size, note = training
    num_samples = record.distinct_images
    labels = None
    if audit.threat_model == "labels_known":
        if record.labels is None:
            return "threat model labels_known, but the client sent no labels"
        labels = record.labels
    if record.note:
        note = f"{note}; {record.note}" if note else record.note
    try:
        observation = Observation.from_update(
            model_fn(), sent.arrays.to_torch_state_dict(), state, data_spec, lr=float(lr),
            local_steps=local_steps, batch_size=batch_size, num_samples=num_samples,
            momentum=float(config.get("momentum", 0.0)),
            weight_decay=float(config.get("weight-decay", 0.0)), labels=labels)
    except ValueError as error:
        return f"malformed update: {error}"
    return AuditJob(server_round=server_round, node_id=node, observation=observation, num_images=num_samples,
                    local_steps=local_steps, batch_size=batch_size, scoring_handler=record.scoring_handler,
                    note=note)
