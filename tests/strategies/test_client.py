"""Audited ClientApps: the scoring query reaches audit_mod; the ready-made client trains as configured."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from semsim_audit.strategies import AuditedClientApp, audit_mod, make_client_app
from semsim_audit.strategies.client import evaluate_model, train_locally
from semsim_audit.strategies.protocol import (
    ANSWER_PREFIX,
    CAPTURE_KEY,
    RECORD_KEY,
    REQUEST_PREFIX,
    SCORING_MESSAGE_TYPE,
    decode_answer,
    decode_record,
)
from semsim_audit.strategies.simulation import RunConfigMod


def _train_message(setup, **config: Any) -> Message:
    content = RecordDict({"arrays": ArrayRecord(setup.model_fn().state_dict()),
                          "config": ConfigRecord({CAPTURE_KEY: True, **config})})
    return Message(content, 100, MessageType.TRAIN)


def _context(**run_config: Any) -> Context:
    return Context(run_id=1, node_id=100, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config=run_config)


def _scoring_query(round_: int = 1) -> Message:
    # A malformed request is enough to see who answers it: audit_mod answers "failed", with the reason.
    return Message(RecordDict({f"{REQUEST_PREFIX}{round_}": ConfigRecord({"audit-id": round_})}), 100,
                   SCORING_MESSAGE_TYPE)


def test_train_runs_the_configured_steps_and_records_each_batch(setup) -> None:
    app = make_client_app(setup.model_fn, setup.load_partition)
    assert isinstance(app, AuditedClientApp)
    reply = app(_train_message(setup, lr=0.05, **{CAPTURE_KEY: 1, "local-steps": 3, "batch-size": 2}),
                _context())
    record = decode_record(reply.content[RECORD_KEY])
    assert (record.local_steps, record.batch_size, record.scoring_handler) == (3, 2, True)
    assert record.distinct_images == 4  # 3 steps x 2 over a 4-image partition: each image once
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 4 and metrics["train_loss"] > 0


def test_audited_client_app_hands_scoring_queries_to_audit_mod() -> None:
    app = AuditedClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    reply = app(_scoring_query(3), _context())
    answer = decode_answer(reply.content[f"{ANSWER_PREFIX}3"], 1)
    assert answer.status == "failed" and "scoring request" in answer.reason


def test_a_plain_client_app_never_lets_the_query_reach_its_mods() -> None:
    """Why AuditedClientApp exists: Flower routes by registered type before any mod runs."""
    app = ClientApp(mods=[audit_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    with pytest.raises(ValueError, match="No query function registered"):
        app(_scoring_query(), _context())
    # ...so its audit record tells the server to send the request along with a later message instead.
    reply = app(_train_message_plain(), _context())
    assert decode_record(reply.content[RECORD_KEY]).scoring_handler is False


def _train_message_plain() -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(1)}),
                          "config": ConfigRecord({CAPTURE_KEY: 1})})
    return Message(content, 100, MessageType.TRAIN)


def test_make_client_app_without_audit_is_a_plain_client_app(setup) -> None:
    assert type(make_client_app(setup.model_fn, setup.load_partition, audit=False)) is ClientApp
    placed = make_client_app(setup.model_fn, setup.load_partition, mods=[RunConfigMod({}), audit_mod],
                             audit=False)
    assert isinstance(placed, AuditedClientApp) and placed._mods.count(audit_mod) == 1


def test_one_sgd_step_changes_the_weights_by_lr_times_gradient(setup) -> None:
    model = setup.model_fn()
    data = setup.partitions[0]
    images, labels = data[0][0].unsqueeze(0), torch.tensor([data[0][1]])
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    one = type(data)(data.pixels[:1], data.labels[:1], data.spec, data.classes, data.name)
    train_locally(model, one, lr=0.1)
    for (name, parameter), gradient in zip(model.named_parameters(), gradients, strict=True):
        assert torch.allclose(parameter, expected[name] - 0.1 * gradient, atol=1e-6)


def test_evaluate_reports_loss_and_accuracy(setup) -> None:
    loss, accuracy = evaluate_model(setup.model_fn(), setup.partitions[0])
    assert loss > 0 and 0.0 <= accuracy <= 1.0
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(setup.model_fn(), setup.partitions[0].subset([]))


def test_run_config_mod_shows_entries_inside_and_restores_the_context() -> None:
    seen: dict[str, Any] = {}

    def inner(msg: Message, context: Context) -> Message:
        seen.update(context.run_config)
        return msg

    context = _context(kept=1)
    original = context.run_config
    RunConfigMod({"added": 2, "kept": 9})(Message(RecordDict(), 100, MessageType.TRAIN), context, inner)
    assert seen == {"added": 2, "kept": 1}  # the real run config wins
    assert context.run_config is original and context.run_config == {"kept": 1}
