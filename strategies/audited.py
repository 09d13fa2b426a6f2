"""``AuditedStrategy``: a Flower strategy wrapper that attacks the updates the server receives.

Like Flower's DP wrappers it holds an inner strategy and passes through what it does not change.
configure_train marks the audited clients' messages; aggregate_train and aggregate_evaluate take
the ``audit.*`` records off every reply before the inner strategy sees them; each audited
client's update becomes an audit job (:mod:`semsim_audit.strategies.replies`) for the executor,
and the reconstructions go back to their client to be scored there
(:mod:`semsim_audit.strategies.delivery`). Finished rounds (:mod:`semsim_audit.strategies.rounds`)
go to the report, the sinks and Flower's log and ``Result``, in round order.

Only the inner strategy may fail the run: a failure of the audit's own machinery (marking,
submitting, a sink, a scoring request) is logged and kept on the round, and training goes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO
from pathlib import Path
from typing import Any, Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from torch import nn

from semsim_audit.config import AuditConfig
from semsim_audit.core import DataSpec, select_device
from semsim_audit.report import (
    ClientAudit,
    JsonlSink,
    PrivacyReport,
    ReportSink,
    RoundRecord,
    SinkFanout,
    format_interval,
    format_value,
    pooled_scores,
)
from semsim_audit.scoring import judge_checkpoint
from semsim_audit.semsim import SemSim
from semsim_audit.strategies.delivery import Pending, ScoringDesk
from semsim_audit.strategies.executors import AuditJob, Executor, make_executor
from semsim_audit.strategies.protocol import CAPTURE_KEY, LABELS_KEY
from semsim_audit.strategies.replies import AUDIT_PREFIX, audit_job, stable_key, take_audit_records
from semsim_audit.strategies.rounds import RoundBook, Sent
from semsim_audit.views import RunFolderSink

__all__ = ["AuditedStrategy", "AuditedFedAvg", "AUDIT_PREFIX", "round_metrics"]

_log = logging.getLogger("semsim_audit")
_flwr_log = logging.getLogger("flwr")  # Flower's own log: the audit's numbers beside its accuracy


def _metric(metrics: MetricRecord | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    value = metrics[key]
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _with_capture(content: RecordDict, server_round: int, send_labels: bool) -> RecordDict:
    """A copy of a message's content with ``audit.capture`` (the audited round) in its config.

    FedAvg sends one RecordDict object to every node, so the flag must go into a copy; the
    arrays are shared, not copied (they are never modified).
    """
    flags: dict[str, Any] = {CAPTURE_KEY: server_round, **({LABELS_KEY: True} if send_labels else {})}
    records: dict[str, Any] = dict(content.items())
    configs = [key for key, record in records.items() if isinstance(record, ConfigRecord)]
    for key in configs:
        records[key] = ConfigRecord({**dict(records[key].items()), **flags})
    if not configs:
        records["config"] = ConfigRecord(flags)
    return RecordDict(records)


def round_metrics(record: RoundRecord) -> MetricRecord | None:
    """A finished round's audit numbers for Flower (``audit.*`` keys); None for an unaudited round.

    The leakage rate's 95% interval is the record's: Wilson's, over the round's judged reconstructions.
    """
    if not record.clients:
        return None
    values: dict[str, int | float] = {
        "audit.clients": len(record.clients),
        "audit.failed-clients": sum(c.status != "ok" for c in record.clients),
        "audit.reconstructions": sum(s.recognizable is not None for s in pooled_scores(record.clients)),
    }
    if record.leakage_rate is not None and record.leakage_low is not None and record.leakage_high is not None:
        values["audit.leakage-rate"] = record.leakage_rate
        values["audit.leakage-low"], values["audit.leakage-high"] = record.leakage_low, record.leakage_high
    if record.mean_semsim is not None:
        values["audit.mean-semsim"] = record.mean_semsim
    return MetricRecord(values)


class AuditedStrategy(Strategy):
    """Wrap any Message-API strategy with a per-round privacy audit; ``report`` grows as rounds end.

    Parameters
    ----------
    strategy : Strategy
        The strategy that trains (FedAvg, FedProx, FedAdam, Flower's DP wrappers...); it sees exactly
        what it would see without the audit.
    model_fn : Callable[[], nn.Module]
        Builds the architecture the clients train (no weights needed).
    data_spec : DataSpec
        The public description of the data (shape, classes, normalisation).
    audit : AuditConfig
        What to audit; ``AuditConfig.from_run_config(context.run_config)`` reads it from a run config.
        With ``audit.out_dir`` set, the run folder (``report.jsonl`` fsynced per round, then
        ``report.json``, ``rounds.csv``, ``report.html``, plots) is written there.
    executor : Executor, optional
        Where attacks run; defaults to the one named in ``audit``.
    sinks : Sequence[ReportSink]
        More receivers of each finished round; one that raises is logged and recorded, never fatal.
    semsim : SemSim, optional
        The judge; defaults to ``SemSim.load(audit.semsim_checkpoint)``. Clients score with this same
        network: it travels with the scoring requests unless it is the checkpoint shipped in the package.
    reply_order : "arrival" or "stable-key"
        The order in which the inner strategy receives the training replies. ``"arrival"`` (the
        default) passes them on as Flower delivered them. ``"stable-key"`` sorts them by the key each
        client reports (its partition id in a simulation): a weighted mean is the same number in any
        order, but its float rounding is not, so this makes a seeded run repeat to the bit
        (``run_audited_simulation`` uses it).

    Keep it the outermost wrapper (around Flower's DP wrappers): it then attacks each update as
    the server received it, and its ``start()`` finishes the report. Wrapped inside another
    wrapper it attacks what that wrapper passes down (server-side DP: the clipped updates), and
    ``finish()`` must be called after the run.
    """

    def __init__(self, strategy: Strategy, *, model_fn: Callable[[], nn.Module], data_spec: DataSpec,
                 audit: AuditConfig, executor: Executor | None = None,
                 sinks: Sequence[ReportSink] = (), semsim: SemSim | None = None,
                 reply_order: Literal["arrival", "stable-key"] = "arrival") -> None:
        super().__init__()
        if reply_order not in ("arrival", "stable-key"):
            raise ValueError(f"reply_order must be 'arrival' or 'stable-key', got {reply_order!r}")
        self.reply_order = reply_order
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
        self.desk = ScoringDesk(spec=data_spec, judge=judge_checkpoint(semsim), timeout=audit.scoring_timeout,
                                image_dir=self.run_dir if audit.save_images else None)
        self.sinks = SinkFanout(self._all_sinks(sinks))
        self.report = PrivacyReport(
            attack=audit.attack, threat_model=audit.threat_model,
            semsim=dict(getattr(semsim, "info", {}) or {}),
            config={**audit.model_dump(mode="json"), "data_spec": data_spec.to_dict(),
                    "strategy": type(strategy).__name__, "executor": self.executor.name,
                    "scoring": "on the clients"},
        )
        self.rounds = RoundBook(audit.attack, self._finished_round, waiting=self.desk.waiting)
        self.metrics: dict[int, MetricRecord] = {}  # each finished audited round's numbers for Flower
        self._grid: Grid | None = None  # the grid of the run, for the scoring queries at the end
        self._num_rounds: int | None = None
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"AuditedStrategy({self.strategy!r}, attack={self.audit.attack!r})"

    def _all_sinks(self, sinks: Sequence[ReportSink]) -> list[Any]:
        """The journal first (on disk before anything else), the user's sinks, then the run folder's views."""
        if self.run_dir is None:
            return list(sinks)
        views = [s for s in sinks if isinstance(s, RunFolderSink)
                 and s.run_dir.resolve() == self.run_dir.resolve()]
        folder = [] if views else [RunFolderSink(self.run_dir)]
        return [JsonlSink(self.run_dir / "report.jsonl"), *sinks, *folder]

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
        metrics = round_metrics(record)
        if metrics is None:
            return
        self.metrics[record.round] = metrics
        _flwr_log.info("\t└──> Privacy audit, round %s: leakage rate %s (95%% CI %s), mean SemSim %s, "
                       "%s client(s), status %s", record.round, format_value(record.leakage_rate, ".2f"),
                       format_interval(record.leakage_low, record.leakage_high, ".2f"),
                       format_value(record.mean_semsim, ".3f"), len(record.clients), record.status)

    def _machinery_failed(self, server_round: int, what: str, error: Exception) -> None:
        _log.warning("audit: %s failed in round %s; training goes on", what, server_round, exc_info=error)
        self.rounds.add_error(server_round, f"{what} failed: {type(error).__name__}: {error}")

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` has closed the report."""
        return self._closed

    def finish(self, timeout: float | None = None) -> PrivacyReport:
        """Wait (up to ``timeout`` s, default ``audit.timeout``) for the attacks and the clients'
        scores, write the rest, close the sinks. ``timeout=0`` gives up on whatever is still out."""
        if self._closed:
            return self.report
        self._open()
        timeout = self.audit.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if timeout > 0:
            self.rounds.wait(timeout)
            self._deliver(self._grid)  # whatever was attacked in time is scored; the rest fails below
        self.desk.abandon()
        self.rounds.close(max(0.0, deadline - time.monotonic()))
        self._closed = True
        try:
            self.executor.shutdown(wait=False)
        except Exception as error:
            _log.warning("audit: the executor failed to shut down: %r", error)
        self.sinks.close(self.report)
        if self.run_dir is not None:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "report.json").write_text(self.report.model_dump_json(indent=2),
                                                          encoding="utf-8")
            except OSError as error:
                self.report.errors.append(f"report.json not written: {error}")
                _log.warning("audit: report.json not written: %s", error)
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
        self._grid = grid
        self._open()
        self._deliver(grid)  # reconstructions the thread executor finished meanwhile
        self.rounds.evaluated_before(server_round)  # the previous rounds are trained and evaluated
        self.rounds.flush()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.audit.audits_round(server_round):
            try:
                self._mark(server_round, arrays, messages)
            except Exception as error:
                self._machinery_failed(server_round, "marking the audited clients", error)
        return self._attach(messages, f"train {server_round}", server_round)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Strip audit records off every reply, submit the audits, aggregate with the inner strategy."""
        replies = list(replies)
        records = take_audit_records(replies)
        self._collect(records, replies, f"train {server_round}", server_round)
        if self.rounds[server_round].sent:
            try:
                self._submit(server_round, replies, records)
            except Exception as error:
                self._machinery_failed(server_round, "submitting the audits", error)
        self._deliver(self._grid)  # the inline executor's reconstructions are ready now
        if self.reply_order == "stable-key":
            replies.sort(key=lambda reply: stable_key(records.get(reply.metadata.src_node_id, {}),
                                                      reply.metadata.src_node_id))
        result = self.strategy.aggregate_train(server_round, replies)
        self.rounds.flush()
        return result

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Configure the inner strategy's evaluation; scoring requests ride along where needed."""
        self._grid = grid
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        if messages and server_round == self._num_rounds:
            # The last messages these clients get: let the last attacks finish to ride along.
            self.rounds.wait(self.audit.timeout)
        self._deliver(grid)
        return self._attach(messages, f"evaluate {server_round}", server_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Strip audit records, aggregate with the inner strategy; keep the round's accuracy and loss."""
        replies = list(replies)
        self._collect(take_audit_records(replies), replies, f"evaluate {server_round}", server_round)
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        self.rounds.set_metrics(server_round, _metric(metrics, self.audit.accuracy_key),
                                _metric(metrics, self.audit.loss_key), central=False)
        self.rounds.flush()
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
        """Run the strategy (Flower's loop) with audits; at the end wait for them and close the report.

        Each audited round's ``audit.*`` numbers (leakage rate and its 95% interval, mean SemSim,
        clients) are added to ``Result.evaluate_metrics_serverapp`` and logged by Flower.
        """
        wrapped = None
        if evaluate_fn is not None:
            def wrapped(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                metrics = evaluate_fn(server_round, arrays)
                self.record_central_evaluation(server_round, metrics)
                if server_round < 1:
                    return metrics
                self.rounds.evaluated_before(server_round + 1)  # the central evaluation ends a round
                self.rounds.flush()
                return _merged(metrics, self.metrics.get(server_round))

        self._num_rounds = num_rounds
        self._open()
        try:
            result = super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                                   evaluate_config, wrapped)
        except BaseException:
            self.finish(timeout=0.0)  # keep every round that finished; do not wait on the rest
            raise
        self.finish()
        for server_round, metrics in self.metrics.items():
            merged = _merged(result.evaluate_metrics_serverapp.get(server_round), metrics)
            if merged is not None:
                result.evaluate_metrics_serverapp[server_round] = merged
        return result

    # ----------------------------------------------------------------- audits
    def _mark(self, server_round: int, arrays: ArrayRecord, messages: list[Message]) -> None:
        state = self.rounds[server_round]
        by_node = {msg.metadata.dst_node_id: msg for msg in messages if msg.has_content()}
        # Named clients are marked alone; otherwise every sampled client captures, and the ones
        # attacked are chosen from the replies by the stable key each reports (see _submit).
        named = isinstance(self.audit.clients, list)
        for node in self.audit.choose_clients(server_round, list(by_node)) if named else list(by_node):
            msg = by_node[node]
            array_records = list(msg.content.array_records.values())
            train_config: dict[str, Any] = {}
            for record in msg.content.config_records.values():
                train_config.update(record.items())
            state.sent[node] = Sent(array_records[0] if len(array_records) == 1 else arrays, train_config)
            msg.content = _with_capture(msg.content, server_round, self.audit.threat_model == "labels_known")

    def _attach(self, messages: list[Message], phase: str, server_round: int) -> list[Message]:
        try:
            return self.desk.attach(messages, phase)
        except Exception as error:
            self._machinery_failed(server_round, "attaching scoring requests", error)
            return messages

    def _collect(self, records: dict[int, Any], replies: list[Message], phase: str,
                 server_round: int) -> None:
        replied = {r.metadata.src_node_id for r in replies if r.has_content()}
        try:
            self.desk.collect(records, replied, phase)
        except Exception as error:
            self._machinery_failed(server_round, "reading the clients' scores", error)

    def _deliver(self, grid: Grid | None) -> None:
        """Send the waiting reconstructions to the clients that answer scoring queries."""
        if grid is None:
            return
        try:
            self.desk.query(grid)
        except Exception as error:  # the desk fails each audit it could not finish; this is a bug's net
            _log.warning("audit: scoring queries failed: %r", error, exc_info=error)
        self.rounds.flush()

    def _submit(self, server_round: int, replies: list[Message], records: dict[int, Any]) -> None:
        state = self.rounds[server_round]
        keys = {node: stable_key(records.get(node, {}), node) for node in state.sent}
        if not isinstance(self.audit.clients, list):
            chosen = set(self.audit.choose_clients(server_round, list(keys.values())))
            state.sent = {node: sent for node, sent in state.sent.items() if keys[node] in chosen}
        # Jobs in stable-key order: a batched attack draws its trials' starts by position, so the same
        # seed then gives each client the same start whatever node ids this run of Flower drew.
        state.sent = dict(sorted(state.sent.items(), key=lambda item: keys[item[0]]))
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        examples_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        jobs: list[AuditJob] = []
        for node, sent in state.sent.items():
            job = audit_job(server_round, node, sent, by_node.get(node), records.get(node, {}),
                            model_fn=self.model_fn, data_spec=self.data_spec, audit=self.audit,
                            examples_key=examples_key)
            if isinstance(job, str):
                state.audits.append(ClientAudit(node_id=node, client_key=keys[node], attack=self.audit.attack,
                                                status="skipped", reason=job))
            else:
                job.client_key = keys[node]
                jobs.append(job)
        if not jobs:
            return
        try:
            state.future = self.executor.submit(
                jobs, self.audit.attack, self.attack_config, self._attacked,
                progress=lambda done, total: self.sinks.attack_progress(server_round, done, total))
        except Exception as error:
            state.audits.extend(ClientAudit(node_id=job.node_id, client_key=job.client_key,
                                            attack=self.audit.attack, status="failed",
                                            reason=f"executor failed: {type(error).__name__}: {error}",
                                            num_images=job.num_images, note=job.note) for job in jobs)
            self._machinery_failed(server_round, f"the {self.executor.name} executor", error)
            return
        state.future.add_done_callback(lambda _future: self.rounds.flush())

    def _attacked(self, job: AuditJob, result: Any) -> ClientAudit:
        """An attack's result: a failed audit, or one whose reconstructions go to the client to be scored."""
        loss = getattr(result, "loss", None)
        common: dict[str, Any] = dict(
            node_id=job.node_id, client_key=job.client_key, attack=self.audit.attack,
            num_images=job.num_images, note=job.note,
            local_steps=job.local_steps, batch_size=job.batch_size,
            seconds=float(getattr(result, "seconds", 0.0) or 0.0),
            attack_loss=float(loss) if loss is not None and math.isfinite(float(loss)) else None)
        if getattr(result, "status", "ok") != "ok":
            reason = getattr(result, "reason", None) or "attack failed"
            return ClientAudit(status="failed", reason=reason, **common)
        images = getattr(result, "images", None)
        usable = images is not None and images.dim() == 4 and images.shape[0] > 0
        if not usable or not bool(torch.isfinite(images).all()):
            return ClientAudit(status="failed", **common,
                               reason="attack diverged: the reconstruction is empty or not finite")
        audit = ClientAudit(status="ok", **common)
        labels = getattr(result, "labels", None)
        reconstructions = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
        self.desk.add(Pending(job.server_round, job.node_id, reconstructions,
                              None if labels is None else labels.detach().cpu().reshape(-1), audit,
                              job.scoring_handler))
        return audit


def _merged(first: MetricRecord | None, second: MetricRecord | None) -> MetricRecord | None:
    if first is None or second is None:
        return first if second is None else second
    return MetricRecord({**dict(first.items()), **dict(second.items())})


class AuditedFedAvg(AuditedStrategy):
    """``AuditedStrategy(FedAvg(**fedavg_options))``: the drop-in audited FedAvg."""

    def __init__(self, *, model_fn: Callable[[], nn.Module], data_spec: DataSpec, audit: AuditConfig,
                 executor: Executor | None = None, sinks: Sequence[ReportSink] = (),
                 semsim: SemSim | None = None, reply_order: Literal["arrival", "stable-key"] = "arrival",
                 **fedavg_options: Any) -> None:
        super().__init__(FedAvg(**fedavg_options), model_fn=model_fn, data_spec=data_spec, audit=audit,
                         executor=executor, sinks=sinks, semsim=semsim, reply_order=reply_order)
