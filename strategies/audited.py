"""``AuditedStrategy``: a Flower strategy wrapper that attacks the updates the server receives.

Like Flower's DP wrappers it holds an inner strategy and passes through what it does not change.
configure_train marks the audited clients' messages; aggregate_train takes the ``audit.*``
records off every reply before the inner strategy sees them, turns each audited client's update
into an audit job (:mod:`semsim_audit.strategies.replies`), submits the jobs to an executor and
returns the inner strategy's result as is. Finished rounds (:mod:`semsim_audit.strategies.rounds`)
go to the report and the sinks in round order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from torch import nn

from semsim_audit.config import AuditConfig
from semsim_audit.core import DataSpec, select_device
from semsim_audit.report import ClientAudit, JsonlSink, PrivacyReport, ReportSink, RoundRecord, SinkFanout
from semsim_audit.scoring import score_client
from semsim_audit.semsim import SemSim
from semsim_audit.strategies.executors import AuditJob, Executor, make_executor
from semsim_audit.strategies.mods import CAPTURE_KEY
from semsim_audit.strategies.replies import AUDIT_PREFIX, audit_job, take_audit_records
from semsim_audit.strategies.rounds import RoundBook, Sent

__all__ = ["AuditedStrategy", "AuditedFedAvg", "AUDIT_PREFIX"]

_log = logging.getLogger("semsim_audit")


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
        journal = [JsonlSink(self.run_dir / "report.jsonl")] if self.run_dir is not None else []
        self.sinks = SinkFanout([*journal, *sinks])
        self.report = PrivacyReport(
            attack=audit.attack, threat_model=audit.threat_model,
            semsim=dict(getattr(semsim, "info", {}) or {}),
            config={**audit.model_dump(mode="json"), "data_spec": data_spec.to_dict(),
                    "strategy": type(strategy).__name__, "executor": self.executor.name},
        )
        self.rounds = RoundBook(audit.attack, self._finished_round)
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
        if not self._started:
            self._started = True
            self.sinks.start(self.report)

    def _finished_round(self, record: RoundRecord) -> None:
        self.report.add_round(record)
        self.sinks.write_round(record)

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` has closed the report."""
        return self._closed

    def finish(self, timeout: float | None = None) -> PrivacyReport:
        """Wait (up to ``timeout`` s, default ``audit.timeout``) for audits, write the rest, close sinks."""
        if self._closed:
            return self.report
        self._open()
        self.rounds.close(self.audit.timeout if timeout is None else timeout)
        self._closed = True
        self.executor.shutdown(wait=False)
        self.sinks.close(self.report)
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

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Configure the inner strategy's round; mark the audited clients' messages."""
        self._open()
        self.rounds.evaluated_before(server_round)  # the previous rounds are trained and evaluated
        self.rounds.flush()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        state = self.rounds[server_round]
        if not self.audit.audits_round(server_round):
            return messages
        by_node = {msg.metadata.dst_node_id: msg for msg in messages if msg.has_content()}
        for node in self.audit.choose_clients(server_round, list(by_node)):
            msg = by_node[node]
            array_records = list(msg.content.array_records.values())
            train_config: dict[str, Any] = {}
            for record in msg.content.config_records.values():
                train_config.update(record.items())
            state.sent[node] = Sent(array_records[0] if len(array_records) == 1 else arrays, train_config)
            msg.content = _with_capture(msg.content)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Strip audit records off every reply, submit the audits, aggregate with the inner strategy."""
        replies = list(replies)
        records = take_audit_records(replies)
        if self.rounds[server_round].sent:
            self._submit(server_round, replies, records)
        result = self.strategy.aggregate_train(server_round, replies)
        self.rounds.flush()
        return result

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Pass through to the inner strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate with the inner strategy; keep the round's accuracy and loss for the report."""
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        self.rounds.set_metrics(server_round, _metric(metrics, self.audit.accuracy_key),
                                _metric(metrics, self.audit.loss_key), central=False)
        return metrics

    def record_central_evaluation(self, server_round: int, metrics: MetricRecord | None) -> None:
        """Keep a central evaluation's accuracy and loss (evaluate_fn) for round ``server_round``."""
        accuracy = _metric(metrics, self.audit.accuracy_key)
        loss = _metric(metrics, self.audit.loss_key)
        if server_round >= 1 and (accuracy is not None or loss is not None):
            self.rounds.set_metrics(server_round, accuracy, loss, central=True)

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

    # ----------------------------------------------------------------- audits
    def _submit(self, server_round: int, replies: list[Message], records: dict[int, Any]) -> None:
        state = self.rounds[server_round]
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        examples_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        jobs: list[AuditJob] = []
        for node, sent in state.sent.items():
            job = audit_job(server_round, node, sent, by_node.get(node), records.get(node),
                            model_fn=self.model_fn, data_spec=self.data_spec,
                            labels_known=self.audit.threat_model == "labels_known", examples_key=examples_key)
            if isinstance(job, str):
                state.audits.append(ClientAudit(node_id=node, attack=self.audit.attack, status="skipped",
                                                reason=job))
            else:
                jobs.append(job)
        if jobs:
            state.future = self.executor.submit(jobs, self.audit.attack, self.attack_config, self._score)
            state.future.add_done_callback(lambda _future: self.rounds.flush())

    def _score(self, job: AuditJob, result: Any) -> ClientAudit:
        return score_client(node_id=job.node_id, attack=self.audit.attack, result=result,
                            originals=job.originals, true_labels=job.true_labels, semsim=self.semsim,
                            server_round=job.server_round, local_steps=job.local_steps,
                            batch_size=job.batch_size,
                            run_dir=self.run_dir if self.audit.save_images else None)


class AuditedFedAvg(AuditedStrategy):
    """``AuditedStrategy(FedAvg(**fedavg_options))``: the drop-in audited FedAvg."""

    def __init__(self, *, model_fn: Callable[[], nn.Module], data_spec: DataSpec, audit: AuditConfig,
                 executor: Executor | None = None, sinks: Sequence[ReportSink] = (),
                 semsim: Any = None, **fedavg_options: Any) -> None:
        super().__init__(FedAvg(**fedavg_options), model_fn=model_fn, data_spec=data_spec, audit=audit,
                         executor=executor, sinks=sinks, semsim=semsim)
