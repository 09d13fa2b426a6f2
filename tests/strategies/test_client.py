"""The ready-made client: local SGD as configured, batches recorded, run config handed to mods."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from semsim_audit.strategies import make_client_app
from semsim_audit.strategies.client import evaluate_model, train_locally
from semsim_audit.strategies.mods import CAPTURE_KEY, RECORD_KEY, decode_record
from semsim_audit.strategies.simulation import RunConfigMod


def _train_message(setup, **config: Any) -> Message:
    content = RecordDict({"arrays": ArrayRecord(setup.model_fn().state_dict()),
                          "config": ConfigRecord({CAPTURE_KEY: True, **config})})
    return Message(content, 100, MessageType.TRAIN)


def _context(**run_config: Any) -> Context:
    return Context(run_id=1, node_id=100, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config=run_config)


def test_train_runs_the_configured_steps_and_records_each_batch(setup) -> None:
    app = make_client_app(setup.model_fn, setup.load_partition)
    reply = app(_train_message(setup, lr=0.05, **{"local-steps": 3, "batch-size": 2}),
                _context(**{"audit-export-originals": True}))
    record = decode_record(reply.content[RECORD_KEY])
    assert (record.local_steps, record.batch_size) == (3, 2)
    assert record.images.shape[0] == 4  # 3 steps x 2 over a 4-image partition: each image once
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 4 and metrics["train_loss"] > 0


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
