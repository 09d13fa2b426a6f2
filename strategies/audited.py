"""``AuditedStrategy``: a Flower strategy wrapper that attacks the updates the server receives.

Like Flower's DP wrappers it holds an inner strategy and passes through what it does not change.
configure_train marks the audited clients' messages; aggregate_train takes the ``audit.*``
records off every reply before the inner strategy sees them, turns each audited client's update
into an ``semsim_audit.attacks.Observation`` (global arrays + client arrays + the train config it sent: never
the originals), submits the jobs to an executor and returns the inner strategy's result as is.
Finished rounds go to the report and the sinks in round order.

Train-config keys the server reads to describe local training to the attack (the public
hyper-parameters of the threat model): ``lr`` (required for an audit), ``local-steps``,
``batch-size``, ``momentum``, ``weight-decay``; missing ones default to 1 step, batch size 1,
no momentum, no weight decay.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from torch import nn

from semsim_audit.attacks import DataSpec, Observation
from semsim_audit.config import AuditConfig
from semsim_audit.core import select_device
from semsim_audit.report import ClientAudit, JsonlSink, PrivacyReport, ReportSink, RoundRecord
from semsim_audit.scoring import score_client
from semsim_audit.strategies.executors import AuditJob, Executor, make_executor
from semsim_audit.strategies.mods import CAPTURE_KEY, RECORD_KEY, decode_record

__all__ = ["AuditedStrategy", "AuditedFedAvg", "AUDIT_PREFIX"]

AUDIT_PREFIX = "audit."
_log = logging.getLogger("semsim_audit")


@dataclass
class _Sent:
    """What the server sent an audited client: the global arrays and the train config."""

    arrays: ArrayRecord
    config: dict[str, Any]


@dataclass
class _Round:
    server_round: int
    sent: dict[int, _Sent] = field(default_factory=dict)
    audits: list[ClientAudit] = field(default_factory=list)  # skipped before any attack ran
    future: Future[list[ClientAudit]] | None = None
    accuracy: float | None = None
    loss: float | None = None
    central: bool = False  # accuracy/loss came from evaluate_fn: it wins over the clients'
    evaluated: bool = False


def _metric(metrics: MetricRecord | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    value = metrics[key]
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _with_capture(content: RecordDict) -> RecordDict:
    """A copy of a message's content with ``audit.capture`` in its config.

    FedAvg sends one RecordDict object to every node, so the flag must go into a copy; the
    arrays are shared, not copied (they are never modified).
    """
    records: dict[str, Any] = dict(content.items())
    configs = [key for key, record in records.items() if isinstance(record, ConfigRecord)]
    for key in configs:
        copied = ConfigRecord(dict(records[key].items()))
        copied[CAPTURE_KEY] = True
        records[key] = copied
    if not configs:
        records["config"] = ConfigRecord({CAPTURE_KEY: True})
    return RecordDict(records)


class AuditedStrategy(Strategy):
    """Wrap any Message-API strategy with a per-round privacy audit; ``report`` grows as rounds end.

    ``model_fn`` builds the architecture the clients train (no weights needed); ``data_spec`` is
    the public description of the data. ``executor`` defaults to the one named in ``audit``;
    ``semsim`` defaults to ``SemSim.load(audit.semsim_checkpoint)``. With ``audit.out_dir`` set,
    ``report.jsonl`` (fsynced per round) and, at the end, ``report.json`` are written there.

    Keep it the outermost wrapper (around Flower's DP wrappers): it then attacks each update as
    the server received it, and its ``start()`` finishes the report. Wrapped inside another
    wrapper it attacks what that wrapper passes down (server-side DP: the clipped updates), and
    ``finish()`` must be called after the run.
    """

    def __init__(self, strategy: Strategy, *, model_fn: Callable[[], nn.Module], data_spec: DataSpec,
                 audit: AuditConfig, executor: Executor | None = None,
                 sinks: Sequence[ReportSink] = (), semsim: Any = None) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise ValueError(f"strategy must be a flwr Strategy, got {type(strategy).__name__}")
        if not isinstance(audit, AuditConfig):
            raise ValueError(f"audit must be an AuditConfig, got {type(audit).__name__}")
        self.strategy = strategy
        self.model_fn = model_fn
        self.data_spec = data_spec
        self.audit = audit
        self.attack_config = audit.attack_settings()
        self._check_model()
        if semsim is None:
            from semsim_audit.semsim import SemSim

            try:
                semsim = SemSim.load(audit.semsim_checkpoint, device=audit.device)
            except ValueError as error:
                raise ValueError(f"semsim_checkpoint: {error}") from None
        self.semsim = semsim
        self.executor = executor or make_executor(
            audit.executor, device=select_device(self.attack_config.device), batch=audit.batch_jobs,
            ray_address=audit.ray_address, ray_num_cpus=audit.ray_num_cpus,
            ray_num_gpus=audit.ray_num_gpus)
        self.run_dir: Path | None = Path(audit.out_dir) if audit.out_dir is not None else None
        self.sinks: list[ReportSink] = list(sinks)
        if self.run_dir is not None:
            self.sinks.insert(0, JsonlSink(self.run_dir / "report.jsonl"))
        self.report = PrivacyReport(
            attack=audit.attack, threat_model=audit.threat_model,
            semsim=dict(getattr(semsim, "info", {}) or {}),
            config={**audit.model_dump(mode="json"), "data_spec": data_spec.to_dict(),
                    "strategy": type(strategy).__name__, "executor": self.executor.name},
        )
        self._rounds: dict[int, _Round] = {}
        self._written = 0  # highest round handed to the sinks
        self._lock = threading.RLock()
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"AuditedStrategy({self.strategy!r}, attack={self.audit.attack!r})"

    def _check_model(self) -> None:
        model = self.model_fn()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model_fn must return a torch.nn.Module, got {type(model).__name__}")
        probe = torch.zeros(1, *self.data_spec.shape)
        try:
            with torch.no_grad():
                out = model.eval()(probe)
        except Exception as error:
            raise ValueError(f"model_fn's model does not accept data_spec.shape "
                             f"{self.data_spec.shape}: {error}") from None
        if out.shape[-1] != self.data_spec.num_classes:
            raise ValueError(f"model_fn's model has {out.shape[-1]} outputs, data_spec.num_classes "
                             f"is {self.data_spec.num_classes}")

    # ----------------------------------------------------------------- lifecycle and sinks
    def _open(self) -> None:
        if self._started:
            return
        self._started = True
        for sink in self.sinks:
            sink.start(self.report)

    def _round(self, server_round: int) -> _Round:
        if server_round not in self._rounds:
            self._rounds[server_round] = _Round(server_round)
        return self._rounds[server_round]

    def _ready(self, state: _Round) -> bool:
        return state.evaluated and (state.future is None or state.future.done())

    def _complete(self, state: _Round, timeout_reason: str | None = None) -> RoundRecord:
        clients = list(state.audits)
        if state.future is not None:
            if state.future.done() and state.future.exception() is None:
                clients.extend(state.future.result())
            else:
                reason = timeout_reason or f"executor error: {state.future.exception()!r}"
                clients.extend(ClientAudit(node_id=node, attack=self.audit.attack, status="failed",
                                           reason=reason) for node in self._pending_nodes(state))
        clients.sort(key=lambda c: c.node_id)
        return RoundRecord(round=state.server_round, accuracy=state.accuracy, loss=state.loss,
                           clients=clients).summarise()

    def _pending_nodes(self, state: _Round) -> list[int]:
        skipped = {audit.node_id for audit in state.audits}
        return [node for node in state.sent if node not in skipped]

    def _flush(self, timeout_reason: str | None = None) -> None:
        """Hand finished rounds to the report and the sinks, in round order."""
        with self._lock:
            for server_round in sorted(r for r in self._rounds if r > self._written):
                state = self._rounds[server_round]
                if not self._ready(state) and timeout_reason is None:
                    break
                record = self._complete(state, timeout_reason if not self._ready(state) else None)
                self.report.add_round(record)
                for sink in self.sinks:
                    sink.write_round(record)
                self._written = server_round
                del self._rounds[server_round]

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` has closed the report."""
        return self._closed

    def finish(self, timeout: float | None = None) -> PrivacyReport:
        """Wait (up to ``timeout`` s, default ``audit.timeout``) for audits, write the rest, close sinks."""
        if self._closed:
            return self.report
        self._open()
        deadline = time.monotonic() + (self.audit.timeout if timeout is None else timeout)
        with self._lock:
            states = list(self._rounds.values())
            for state in states:
                state.evaluated = True
        for state in states:
            if state.future is not None:
                try:
                    state.future.result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    break
                except Exception:  # reported per client by _complete
                    pass
        waited = self.audit.timeout if timeout is None else timeout
        self._flush(timeout_reason=f"audit did not finish within the {waited:g} s timeout")
        self._closed = True
        self.executor.shutdown(wait=False)
        for sink in self.sinks:
            sink.close(self.report)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "report.json").write_text(self.report.model_dump_json(indent=2),
                                                      encoding="utf-8")
        return self.report

    # ----------------------------------------------------------------- Strategy interface
    def summary(self) -> None:
        """Log the audit settings, then the inner strategy's summary."""
        _log.log(INFO, "\t├──> Privacy audit: attack=%s every=%s clients=%s threat_model=%s executor=%s",
                 self.audit.attack, self.audit.every, self.audit.clients, self.audit.threat_model,
                 self.executor.name)
        self.strategy.summary()

    def _choose(self, server_round: int, node_ids: list[int]) -> list[int]:
        if isinstance(self.audit.clients, list):
            wanted = set(self.audit.clients)
            return [node for node in node_ids if node in wanted]
        rng = np.random.default_rng([self.audit.seed, server_round])
        count = min(self.audit.clients, len(node_ids))
        ordered = sorted(node_ids)
        # Choose positions, not ids: node ids are 64-bit unsigned and do not survive numpy arrays.
        return sorted(ordered[int(i)] for i in rng.choice(len(ordered), size=count, replace=False))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Configure the inner strategy's round; mark the audited clients' messages."""
        self._open()
        with self._lock:  # every earlier round has been trained and evaluated by now
            for state in self._rounds.values():
                if state.server_round < server_round:
                    state.evaluated = True
        self._flush()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not self.audit.audits_round(server_round):
            with self._lock:
                self._round(server_round)
            return messages
        by_node = {msg.metadata.dst_node_id: msg for msg in messages if msg.has_content()}
        chosen = self._choose(server_round, list(by_node))
        sent: dict[int, _Sent] = {}
        for node in chosen:
            msg = by_node[node]
            content = msg.content
            array_records = list(content.array_records.values())
            global_arrays = array_records[0] if len(array_records) == 1 else arrays
            train_config: dict[str, Any] = {}
            for record in content.config_records.values():
                train_config.update(record.items())
            msg.content = _with_capture(content)
            sent[node] = _Sent(global_arrays, train_config)
        with self._lock:
            self._round(server_round).sent = sent
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Strip audit records off every reply, submit the audits, aggregate with the inner strategy."""
        replies = list(replies)
        records: dict[int, Any] = {}
        for reply in replies:
            if not reply.has_content():
                continue
            for key in [k for k in reply.content.keys() if k.startswith(AUDIT_PREFIX)]:
                taken = reply.content.pop(key)
                if key == RECORD_KEY:
                    records[reply.metadata.src_node_id] = taken
        with self._lock:
            state = self._round(server_round)
        if state.sent:
            self._submit(state, replies, records)
        result = self.strategy.aggregate_train(server_round, replies)
        self._flush()
        return result

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Pass through to the inner strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate with the inner strategy; keep the round's accuracy and loss for the report."""
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        with self._lock:
            state = self._round(server_round)
            if not state.central:
                state.accuracy = _metric(metrics, self.audit.accuracy_key)
                state.loss = _metric(metrics, self.audit.loss_key)
        return metrics

    def record_central_evaluation(self, server_round: int, metrics: MetricRecord | None) -> None:
        """Keep a central evaluation's accuracy and loss (evaluate_fn) for round ``server_round``."""
        accuracy = _metric(metrics, self.audit.accuracy_key)
        loss = _metric(metrics, self.audit.loss_key)
        if server_round < 1 or (accuracy is None and loss is None):
            return
        with self._lock:
            state = self._round(server_round)
            state.accuracy, state.loss, state.central = accuracy, loss, True

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Run the strategy (Flower's loop) with audits; at the end wait for them and close the report."""
        wrapped = None
        if evaluate_fn is not None:
            def wrapped(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                metrics = evaluate_fn(server_round, arrays)
                self.record_central_evaluation(server_round, metrics)
                return metrics

        self._open()
        try:
            result = super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                                   evaluate_config, wrapped)
        except BaseException:
            self.finish(timeout=0.0)  # keep every round that finished; do not wait on the rest
            raise
        self.finish()
        return result

    # ----------------------------------------------------------------- building the jobs
    def _submit(self, state: _Round, replies: list[Message], records: dict[int, Any]) -> None:
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        jobs: list[AuditJob] = []
        for node, sent in state.sent.items():
            try:
                jobs.append(self._job(state.server_round, node, sent, by_node.get(node), records.get(node)))
            except _Skip as skip:
                state.audits.append(ClientAudit(node_id=node, attack=self.audit.attack, status="skipped",
                                                reason=str(skip)))
        if not jobs:
            return
        attack = self.audit.attack
        state.future = self.executor.submit(jobs, attack, self.attack_config, self._score)
        state.future.add_done_callback(lambda _future: self._flush())

    def _score(self, job: AuditJob, result: Any) -> ClientAudit:
        return score_client(node_id=job.node_id, attack=self.audit.attack, result=result,
                            originals=job.originals, true_labels=job.true_labels, semsim=self.semsim,
                            server_round=job.server_round, local_steps=job.local_steps,
                            batch_size=job.batch_size,
                            run_dir=self.run_dir if self.audit.save_images else None)

    def _job(self, server_round: int, node: int, sent: _Sent, reply: Message | None,
             raw_record: Any) -> AuditJob:
        if reply is None:
            raise _Skip("no reply from the client this round")
        if reply.has_error():
            raise _Skip(f"the client replied with an error: {reply.error.reason}")
        if raw_record is None:
            raise _Skip(f"the reply has no {RECORD_KEY!r} (is audit_mod in the ClientApp's mods?)")
        try:
            record = decode_record(raw_record)
        except ValueError as error:
            raise _Skip(f"malformed audit record: {error}") from None
        if record.images is None or record.labels is None:
            raise _Skip(record.note)
        if tuple(record.images.shape[1:]) != self.data_spec.shape:
            raise _Skip(f"the client's images have shape {tuple(record.images.shape[1:])}, "
                        f"data_spec.shape is {self.data_spec.shape}")
        client_state = self._client_state(reply)
        global_state = sent.arrays.to_torch_state_dict()
        config = sent.config
        if "lr" not in config:
            raise _Skip("the train config sent has no 'lr': the attack cannot undo local training")
        local_steps = int(config.get("local-steps", 1))
        batch_size = int(config.get("batch-size", 1))
        num_samples = local_steps * batch_size
        num_examples = self._num_examples(reply)
        if num_examples is not None:
            num_samples = max(1, min(num_samples, num_examples))
        labels = None
        if self.audit.threat_model == "labels_known":
            labels = record.labels
            num_samples = int(record.labels.shape[0])
        try:
            observation = Observation.from_update(
                self.model_fn(), global_state, client_state, self.data_spec, lr=float(config["lr"]),
                local_steps=local_steps, batch_size=batch_size, num_samples=num_samples,
                momentum=float(config.get("momentum", 0.0)),
                weight_decay=float(config.get("weight-decay", 0.0)), labels=labels)
        except ValueError as error:
            raise _Skip(f"malformed update: {error}") from None
        originals = self.data_spec.denormalize(record.images).clamp(0.0, 1.0)
        return AuditJob(server_round=server_round, node_id=node, observation=observation,
                        originals=originals, true_labels=record.labels,
                        local_steps=record.local_steps, batch_size=record.batch_size)

    def _client_state(self, reply: Message) -> dict[str, torch.Tensor]:
        array_records = list(reply.content.array_records.values())
        if len(array_records) != 1:
            raise _Skip(f"malformed reply: expected one ArrayRecord, found {len(array_records)}")
        expected = self.model_fn().state_dict()
        try:
            state = array_records[0].to_torch_state_dict()
        except Exception as error:
            raise _Skip(f"malformed reply: arrays unreadable ({error})") from None
        missing = [name for name in expected if name not in state]
        if missing:
            raise _Skip(f"malformed reply: arrays lack {missing[0]!r} ({len(missing)} missing)")
        for name, tensor in expected.items():
            got = state[name]
            if tuple(got.shape) != tuple(tensor.shape):
                raise _Skip(f"malformed reply: {name!r} has shape {tuple(got.shape)}, "
                            f"the model expects {tuple(tensor.shape)}")
            if got.is_floating_point() and not bool(torch.isfinite(got).all()):
                raise _Skip(f"malformed reply: {name!r} contains NaN or inf")
        return state

    def _num_examples(self, reply: Message) -> int | None:
        for record in reply.content.metric_records.values():
            value = record.get(getattr(self.strategy, "weighted_by_key", "num-examples"))
            if isinstance(value, int | float) and math.isfinite(value) and value >= 1:
                return int(value)
        return None


class _Skip(Exception):
    """An audited reply the audit cannot use; the message is the reason in the report."""


class AuditedFedAvg(AuditedStrategy):
    """``AuditedStrategy(FedAvg(**fedavg_options))``: the drop-in audited FedAvg."""

    def __init__(self, *, model_fn: Callable[[], nn.Module], data_spec: DataSpec, audit: AuditConfig,
                 executor: Executor | None = None, sinks: Sequence[ReportSink] = (),
                 semsim: Any = None, **fedavg_options: Any) -> None:
        super().__init__(FedAvg(**fedavg_options), model_fn=model_fn, data_spec=data_spec, audit=audit,
                         executor=executor, sinks=sinks, semsim=semsim)
