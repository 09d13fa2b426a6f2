"""In Flower's real Simulation Engine (``flwr.simulation.run_simulation``, Ray), nothing mocked:
the README's wiring scores every audited round on the clients, the originals never reach the
server, aggregation is bit-identical with and without the audit, and an app shaped like Flower's
PyTorch template with only ``audit_mod`` is attacked as it trained and scored every round."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from audit_apps import Setup, TemplateClient
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from semsim_audit.config import AuditConfig
from semsim_audit.strategies import AuditedStrategy
from semsim_audit.strategies.protocol import ANSWER_PREFIX, SCORING_MESSAGE_TYPE
from semsim_audit.strategies.simulation import RunConfigMod

BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}}


class SpyGrid(Grid):
    """The ServerApp's grid, recording what every server-side message carried when it arrived."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.sent_types: list[str] = []
        self.received_bytes: list[bytes] = []
        self.received_keys: list[str] = []

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.sent_types += [m.metadata.message_type for m in messages]
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:  # before the strategy takes the audit records off
            if reply.has_content():
                self.received_keys += list(reply.content.keys())
                self.received_bytes.append(_carried_bytes(reply.content))
        return replies

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)


def _carried_bytes(content: RecordDict) -> bytes:
    chunks = [array.numpy().tobytes() for record in content.array_records.values()
              for array in record.values()]
    chunks += [value for record in content.config_records.values() for value in record.values()
               if isinstance(value, bytes)]
    return b"".join(chunks)


class RaisingSink:
    """A report sink whose logger lost its connection."""

    def start(self, report: Any) -> None:
        raise ConnectionError("logger unreachable")

    def write_round(self, record: Any) -> None:
        raise ConnectionError("logger unreachable")

    def close(self, report: Any) -> None:
        raise ConnectionError("logger unreachable")


def _simulate(client_app: ClientApp, make_strategy: Callable[[], Strategy], initial: ArrayRecord,
              rounds: int = 2) -> tuple[Strategy, Any, SpyGrid]:
    from flwr.simulation import run_simulation  # pulls in Ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ran: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        spy, strategy = SpyGrid(grid), make_strategy()
        ran.update(spy=spy, strategy=strategy)
        ran["result"] = strategy.start(grid=spy, initial_arrays=initial, num_rounds=rounds,
                                       train_config=ConfigRecord({"lr": 0.1}))

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=2,
                       backend_config=BACKEND)  # type: ignore[arg-type]
    finally:
        flwr_logger.setLevel(level)
    assert "result" in ran, "the ServerApp did not finish"
    return ran["strategy"], ran["result"], ran["spy"]


def _initial(setup: Setup) -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord(setup.model_fn().state_dict())


@pytest.mark.slow
def test_readme_wiring_scores_every_round_on_the_clients_and_keeps_aggregation(photos, small_semsim,
                                                                                 tmp_path: Path) -> None:
    setup = Setup(photos)
    client = TemplateClient(setup)
    training = [RunConfigMod({"local-epochs": 1})]  # the template's own key; nothing of the audit's
    run_dir = tmp_path / "run"

    def fedprox() -> FedProx:
        return FedProx(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2, proximal_mu=0.0)

    def audited() -> AuditedStrategy:
        audit = AuditConfig(attack="inverting-gradients", attack_config={"iterations": 3}, clients=2,
                            out_dir=run_dir, local_epochs=1, local_batch_size=2)
        return AuditedStrategy(fedprox(), model_fn=setup.model_fn, data_spec=setup.spec, audit=audit,
                               sinks=[RaisingSink()], semsim=small_semsim)

    strategy, result, spy = _simulate(client.app("audited", training), audited, _initial(setup))
    report = strategy.report
    assert [r.round for r in report.rounds] == [1, 2]
    for record in report.rounds:
        assert record.status == "ok" and record.leakage_rate is not None, record.clients
        assert all(c.scored_on == "client" and c.scores for c in record.clients)
        assert any("RaisingSink" in error for error in record.errors)  # and the run went on
        metrics = result.evaluate_metrics_serverapp[record.round]
        assert metrics["audit.leakage-rate"] == record.leakage_rate and "audit.leakage-high" in metrics
    for name in ("report.jsonl", "report.json", "rounds.csv", "report.html"):
        assert (run_dir / name).is_file(), name

    # The clients answered the scoring queries; no server-side message carried an original.
    assert SCORING_MESSAGE_TYPE in spy.sent_types
    assert any(key.startswith(ANSWER_PREFIX) for key in spy.received_keys)
    rows = [t.contiguous().numpy().tobytes()[:128] for partition in setup.partitions for image, _ in partition
            for t in (image, setup.spec.denormalize(image).clamp(0, 1))]
    received = b"".join(spy.received_bytes)
    assert received and not any(row in received for row in rows)

    # The same run without the audit aggregates to the same bits.
    _, plain, _ = _simulate(client.app("plain", training), fedprox, _initial(setup))
    assert plain.arrays.keys() == result.arrays.keys()
    for key in plain.arrays.keys():
        assert np.array_equal(plain.arrays[key].numpy(), result.arrays[key].numpy()), key


@pytest.mark.slow
def test_template_app_with_only_audit_mod_is_attacked_as_trained_and_scored_every_round(photos,
                                                                                       small_semsim) -> None:
    setup = Setup(photos)
    # The run config a `flwr run` of the template would give both sides.
    run_config = {"local-epochs": 2, "batch-size": 2, "num-server-rounds": 2,
                  "audit-attack": "inverting-gradients", "audit-iterations": 3, "audit-clients": 2}

    def audited() -> AuditedStrategy:
        inner = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2, min_evaluate_nodes=2)
        return AuditedStrategy(inner, model_fn=setup.model_fn, data_spec=setup.spec,
                               audit=AuditConfig.from_run_config(run_config), semsim=small_semsim)

    app = TemplateClient(setup).app("mod", [RunConfigMod(run_config)])
    strategy, _, spy = _simulate(app, audited, _initial(setup))
    assert SCORING_MESSAGE_TYPE not in spy.sent_types  # the requests rode on the evaluate messages
    for record in strategy.report.rounds:
        assert record.status == "ok" and record.leakage_rate is not None, record.clients
        for client in record.clients:
            # 2 epochs x 2 batches of 2 images: what the client ran, as the run config declares it.
            assert (client.local_steps, client.batch_size, client.num_images, client.note) == (4, 2, 4, None)
            assert client.scored_on == "client"
