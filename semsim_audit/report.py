"""The privacy report as data: per-round records, the whole-run report, and the JSONL journal.

Everything a user sees (console table, CSV, HTML) is a view of a :class:`PrivacyReport`.
The JSONL journal is written one round at a time, flushed and fsynced, so a run killed at any
moment leaves a readable report of all finished rounds; :func:`read_jsonl` tolerates a
truncated last line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

if TYPE_CHECKING:
    import pandas

__all__ = [
    "ReconstructionScore", "ClientAudit", "RoundRecord", "PrivacyReport", "ReportSink",
    "SinkFanout", "JsonlSink", "LogSink", "read_jsonl", "REPORT_VERSION", "mean", "leakage_rate",
    "pooled_scores", "format_value", "format_interval", "wilson_interval", "TableLevel",
    "ReconstructionRow", "ClientRow", "RoundRow", "reconstruction_rows", "client_rows", "round_rows",
    "table_rows",
]

REPORT_VERSION = 1
AuditStatus = Literal["ok", "failed", "skipped"]

_log = logging.getLogger("semsim_audit")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values; None when there is none (unknown scores are left out, not zero)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% at z=1.96); None when nothing was counted.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or 1 successes,
    which is what a round of a handful of reconstructions usually gives.
    """
    if total <= 0:
        return None
    if not 0 <= successes <= total:
        raise ValueError(f"successes must lie in [0, {total}], got {successes}")
    rate = successes / total
    denominator = 1.0 + z * z / total
    centre = (rate + z * z / (2 * total)) / denominator
    half = z * math.sqrt(rate * (1.0 - rate) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def format_value(value: float | None, spec: str, unit: str = "") -> str:
    """``value`` in the format ``spec`` followed by ``unit``, or "n/a" when it is unknown."""
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def format_interval(low: float | None, high: float | None, spec: str, unit: str = "") -> str:
    """``[low, high]`` in the format ``spec``, or "n/a" when either end is unknown."""
    return "n/a" if low is None or high is None else f"[{low:{spec}}, {high:{spec}}]{unit}"


class ReconstructionScore(BaseModel):
    """One reconstruction matched to one original. SemSim: lower = more similar."""

    model_config = ConfigDict(extra="forbid")

    original_index: int
    semsim: float | None = None
    recognizable: bool | None = None
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    true_label: int | None = None
    recovered_label: int | None = None
    identified: bool | None = None
    # Distance inside the checkpoint's borderline band around the threshold (None: the checkpoint has none).
    borderline: bool | None = None
    # Which of the attack's reconstructions was matched to this original (matching is order-free).
    reconstruction_index: int | None = None
    original_image: str | None = None
    reconstruction_image: str | None = None


class ClientAudit(BaseModel):
    """The audit of one client's update in one round."""

    model_config = ConfigDict(extra="forbid")

    node_id: int
    # What the node is called across runs (its partition id in a simulation), when the client said.
    client_key: str | None = None
    attack: str
    status: AuditStatus
    reason: str | None = None
    # Something worth knowing about an audit that still ran (e.g. the client trained otherwise
    # than the server declared, and the observed training was attacked).
    note: str | None = None
    # Where the originals met the reconstructions: "client" (the default; the originals stay
    # there) or "server" (outside Flower, e.g. `semsim-audit attack`).
    scored_on: Literal["client", "server"] | None = None
    seconds: float = 0.0
    num_images: int = 0
    local_steps: int | None = None
    batch_size: int | None = None
    label_accuracy: float | None = None
    attack_loss: float | None = None
    scores: list[ReconstructionScore] = Field(default_factory=list)

    @property
    def leakage_rate(self) -> float | None:
        return leakage_rate(self.scores)

    @property
    def mean_semsim(self) -> float | None:
        return mean(s.semsim for s in self.scores)


def leakage_rate(scores: Iterable[ReconstructionScore]) -> float | None:
    """Share of the judged reconstructions SemSim calls recognizable; None when none was judged."""
    flags = [s.recognizable for s in scores if s.recognizable is not None]
    return sum(flags) / len(flags) if flags else None


def pooled_scores(clients: Iterable[ClientAudit]) -> list[ReconstructionScore]:
    """Every reconstruction score of the clients whose audit succeeded, pooled."""
    return [s for c in clients if c.status == "ok" for s in c.scores]


class RoundRecord(BaseModel):
    """One finished round: accuracy beside leakage. Aggregates come from :meth:`summarise`."""

    model_config = ConfigDict(extra="forbid")

    round: int
    accuracy: float | None = None
    loss: float | None = None
    clients: list[ClientAudit] = Field(default_factory=list)
    leakage_rate: float | None = None
    # 95% Wilson interval of the leakage rate over the round's judged reconstructions.
    leakage_low: float | None = None
    leakage_high: float | None = None
    # Judged reconstructions whose SemSim distance is within the checkpoint's borderline band.
    borderline: int | None = None
    mean_semsim: float | None = None
    mean_psnr: float | None = None
    mean_ssim: float | None = None
    mean_lpips: float | None = None
    attack_seconds: float = 0.0
    worst_client: int | None = None
    status: Literal["ok", "partial", "failed", "not audited"] = "not audited"
    # Failures of the audit machinery in this round (a report sink, the executor): logged and
    # kept here; the federated run went on.
    errors: list[str] = Field(default_factory=list)
    finished_at: str = Field(default_factory=_utc_now)

    def summarise(self) -> RoundRecord:
        """Fill the round aggregates from the client audits (returns self)."""
        scores = pooled_scores(self.clients)
        self.leakage_rate = leakage_rate(scores)
        judged = [s for s in scores if s.recognizable is not None]
        interval = wilson_interval(sum(bool(s.recognizable) for s in judged), len(judged))
        self.leakage_low, self.leakage_high = interval if interval is not None else (None, None)
        flags = [s.borderline for s in judged if s.borderline is not None]
        self.borderline = sum(flags) if flags else None
        self.mean_semsim = mean(s.semsim for s in scores)
        self.mean_psnr = mean(s.psnr for s in scores)
        self.mean_ssim = mean(s.ssim for s in scores)
        self.mean_lpips = mean(s.lpips for s in scores)
        self.attack_seconds = sum(c.seconds for c in self.clients)
        scored = [c for c in self.clients if c.status == "ok" and c.mean_semsim is not None]
        # The worst client leaks most: the lowest mean SemSim distance.
        self.worst_client = min(scored, key=lambda c: c.mean_semsim).node_id if scored else None  # type: ignore[arg-type,return-value]
        if not self.clients:
            self.status = "not audited"
        else:
            ok = sum(c.status == "ok" for c in self.clients)
            self.status = "ok" if ok == len(self.clients) else ("failed" if ok == 0 else "partial")
        return self


class PrivacyReport(BaseModel):
    """The whole run: what was audited, how, with which SemSim checkpoint, and every round."""

    model_config = ConfigDict(extra="forbid")

    version: int = REPORT_VERSION
    run_id: str = Field(default_factory=lambda: datetime.now().strftime("%Y%m%d-%H%M%S"))
    started_at: str = Field(default_factory=_utc_now)
    attack: str = "inverting-gradients"
    threat_model: str = "labels_recovered"
    semsim: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    rounds: list[RoundRecord] = Field(default_factory=list)
    # Failures outside any round (a sink that could not start or close); the run went on.
    errors: list[str] = Field(default_factory=list)
    # The folder read_jsonl read the journal from: the image paths are relative to it.
    _run_dir: Path | None = PrivateAttr(default=None)

    def machinery_errors(self) -> list[str]:
        """Failures of the audit machinery (sinks, executors), round by round, then the run's own."""
        return [f"round {r.round}: {error}" for r in self.rounds for error in r.errors] + list(self.errors)

    def __eq__(self, other: object) -> bool:
        # Where a report was read from is not part of it: the same journal read from two places is equal.
        if not isinstance(other, PrivacyReport):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @property
    def checkpoint_kind(self) -> str:
        return str(self.semsim.get("annotator", "unknown"))

    def header(self) -> dict[str, Any]:
        """Everything but the rounds: the first line of the JSONL journal."""
        return self.model_dump(mode="json", exclude={"rounds"})

    def add_round(self, record: RoundRecord) -> None:
        self.rounds = [r for r in self.rounds if r.round != record.round] + [record]
        self.rounds.sort(key=lambda r: r.round)

    def worst_round(self) -> RoundRecord | None:
        """The audited round with the highest leakage rate (ties: lowest mean SemSim)."""
        audited = [r for r in self.rounds if r.leakage_rate is not None]
        if not audited:
            return None
        return max(audited, key=lambda r: (r.leakage_rate, -(r.mean_semsim or 0.0)))

    @property
    def run_dir(self) -> Path | None:
        """The run folder the saved images' paths are relative to, if known and there.

        That is the folder the journal was read from (:func:`read_jsonl`), else the ``out_dir`` the
        run was configured with.
        """
        if self._run_dir is not None:
            return self._run_dir
        out_dir = self.config.get("out_dir")
        return Path(out_dir) if isinstance(out_dir, str) and Path(out_dir).is_dir() else None

    def to_dataframe(self, level: TableLevel = "reconstruction") -> pandas.DataFrame:
        """The report as a pandas DataFrame, one row per reconstruction, per client audit or per round.

        Parameters
        ----------
        level : {"reconstruction", "client", "round"}
            ``"reconstruction"`` has the columns of ``scores.csv``, ``"round"`` those of ``rounds.csv``,
            ``"client"`` those of :class:`ClientRow`. Unknown values are missing (None / NaN).
        """
        rows, columns = table_rows(self, level)
        try:  # an optional extra: the report itself needs no pandas
            import pandas
        except ImportError:
            message = 'PrivacyReport.to_dataframe needs pandas: pip install "semsim-audit[pandas]"'
            raise ImportError(message) from None
        return pandas.DataFrame(rows, columns=list(columns))

    def _repr_html_(self) -> str:
        """Jupyter's view: the per-round table, the accuracy and leakage plot, a few saved pairs."""
        # The views sit above the report (they import it): loaded only when a notebook displays one.
        from semsim_audit.views.notebook import report_html

        return report_html(self, self.run_dir)


TableLevel = Literal["reconstruction", "client", "round"]


class ReconstructionRow(NamedTuple):
    """One reconstruction, flat: a line of scores.csv and a row of ``to_dataframe("reconstruction")``."""

    round: int
    client: int
    client_key: str | None
    image_index: int
    attack: str
    semsim: float | None
    recognizable: bool | None
    borderline: bool | None
    psnr: float | None
    ssim: float | None
    lpips: float | None
    true_label: int | None
    recovered_label: int | None
    identified: bool | None
    original_image: str | None
    reconstruction_image: str | None


class ClientRow(NamedTuple):
    """One client's audit in one round: a row of ``to_dataframe("client")``."""

    round: int
    client: int
    client_key: str | None
    attack: str
    status: str
    reason: str | None
    note: str | None
    scored_on: str | None
    num_images: int
    reconstructions: int
    leakage_rate: float | None
    mean_semsim: float | None
    label_accuracy: float | None
    local_steps: int | None
    batch_size: int | None
    attack_loss: float | None
    seconds: float


class RoundRow(NamedTuple):
    """One round: a line of rounds.csv and a row of ``to_dataframe("round")``."""

    round: int
    accuracy: float | None
    loss: float | None
    audited_clients: int
    failed_clients: int
    leakage_rate: float | None
    leakage_low: float | None
    leakage_high: float | None
    borderline: int | None
    mean_semsim: float | None
    mean_psnr: float | None
    mean_ssim: float | None
    mean_lpips: float | None
    attack_seconds: float
    worst_client: int | None
    status: str
    finished_at: str


def reconstruction_rows(report: PrivacyReport) -> list[ReconstructionRow]:
    """Every scored reconstruction of the run, in round and client order."""
    return [
        ReconstructionRow(
            round=record.round, client=audit.node_id, client_key=audit.client_key,
            image_index=score.original_index, attack=audit.attack, semsim=score.semsim,
            recognizable=score.recognizable, borderline=score.borderline, psnr=score.psnr, ssim=score.ssim,
            lpips=score.lpips, true_label=score.true_label, recovered_label=score.recovered_label,
            identified=score.identified, original_image=score.original_image,
            reconstruction_image=score.reconstruction_image)
        for record in report.rounds for audit in record.clients for score in audit.scores
    ]


def client_rows(report: PrivacyReport) -> list[ClientRow]:
    """Every client audit of the run (failed and skipped ones too), in round order."""
    return [
        ClientRow(
            round=record.round, client=audit.node_id, client_key=audit.client_key, attack=audit.attack,
            status=audit.status, reason=audit.reason, note=audit.note, scored_on=audit.scored_on,
            num_images=audit.num_images, reconstructions=len(audit.scores),
            leakage_rate=audit.leakage_rate, mean_semsim=audit.mean_semsim,
            label_accuracy=audit.label_accuracy, local_steps=audit.local_steps,
            batch_size=audit.batch_size, attack_loss=audit.attack_loss, seconds=audit.seconds)
        for record in report.rounds for audit in record.clients
    ]


def round_rows(report: PrivacyReport) -> list[RoundRow]:
    """Every finished round of the run."""
    return [
        RoundRow(
            round=record.round, accuracy=record.accuracy, loss=record.loss,
            audited_clients=len(record.clients),
            failed_clients=sum(c.status == "failed" for c in record.clients),
            leakage_rate=record.leakage_rate, leakage_low=record.leakage_low,
            leakage_high=record.leakage_high, borderline=record.borderline, mean_semsim=record.mean_semsim,
            mean_psnr=record.mean_psnr, mean_ssim=record.mean_ssim, mean_lpips=record.mean_lpips,
            attack_seconds=record.attack_seconds, worst_client=record.worst_client, status=record.status,
            finished_at=record.finished_at)
        for record in report.rounds
    ]


_TABLES: dict[str, tuple[tuple[str, ...], Callable[[PrivacyReport], Sequence[tuple[Any, ...]]]]] = {
    "reconstruction": (ReconstructionRow._fields, reconstruction_rows),
    "client": (ClientRow._fields, client_rows),
    "round": (RoundRow._fields, round_rows),
}


def table_rows(report: PrivacyReport, level: TableLevel) -> tuple[Sequence[tuple[Any, ...]], tuple[str, ...]]:
    """The rows of one level and their column names: what the CSV files and ``to_dataframe`` share."""
    if level not in _TABLES:
        levels = ", ".join(repr(name) for name in get_args(TableLevel))
        raise ValueError(f"level must be one of {levels}; got {level!r}")
    columns, build = _TABLES[level]
    return build(report), columns


class ReportSink(Protocol):
    """Receives the run header once, then each finished round, then the final report.

    A sink may also define ``attack_progress(server_round, done, total)``: it then hears how far
    the round's attack is (iterations done of all), from the thread that runs the attack.
    """

    def start(self, report: PrivacyReport) -> None: ...

    def write_round(self, record: RoundRecord) -> None: ...

    def close(self, report: PrivacyReport) -> None: ...


class SinkFanout:
    """Several sinks behind one: each event goes to every sink, in the order given.

    A sink that raises (a logger that lost its connection, a full disk) never stops the run or
    the sinks after it: the failure is logged and kept on the round (``RoundRecord.errors``) or,
    for start and close, on the report (``PrivacyReport.errors``).
    """

    def __init__(self, sinks: Iterable[ReportSink] = ()) -> None:
        self.sinks = list(sinks)

    @staticmethod
    def _failed(sink: ReportSink, event: str, error: Exception) -> str:
        message = f"report sink {type(sink).__name__} failed in {event}: {type(error).__name__}: {error}"
        _log.warning("%s (the run goes on)", message)
        return message

    def start(self, report: PrivacyReport) -> None:
        for sink in self.sinks:
            try:
                sink.start(report)
            except Exception as error:
                report.errors.append(self._failed(sink, "start", error))

    def write_round(self, record: RoundRecord) -> None:
        for sink in self.sinks:
            try:
                sink.write_round(record)
            except Exception as error:
                record.errors.append(self._failed(sink, f"round {record.round}", error))

    def close(self, report: PrivacyReport) -> None:
        for sink in self.sinks:
            try:
                sink.close(report)
            except Exception as error:
                report.errors.append(self._failed(sink, "close", error))

    def attack_progress(self, server_round: int, done: int, total: int) -> None:
        """Tell the sinks that follow attacks how far round ``server_round``'s attack is."""
        for sink in self.sinks:
            follow = getattr(sink, "attack_progress", None)
            if follow is None:
                continue
            try:
                follow(server_round, done, total)
            except Exception as error:  # progress is cosmetic: never worth stopping an attack for
                self._failed(sink, f"round {server_round} progress", error)


class JsonlSink:
    """Appends the header and each round to a JSONL file, flushed and fsynced per line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _append(self, payload: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(payload, allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def start(self, report: PrivacyReport) -> None:
        if self.path.exists():
            self.path.unlink()
        self._append({"type": "run", **report.header()})

    def write_round(self, record: RoundRecord) -> None:
        self._append({"type": "round", **record.model_dump(mode="json")})

    def close(self, report: PrivacyReport) -> None:
        """Nothing to do: every round is already on disk."""


class LogSink:
    """One plain line per finished round, for logs and terminals without rich."""

    def __init__(self, write: Any = print) -> None:
        self._write = write

    def start(self, report: PrivacyReport) -> None:
        self._write(f"[audit] attack={report.attack} threat_model={report.threat_model} "
                    f"semsim={report.checkpoint_kind}")

    def write_round(self, record: RoundRecord) -> None:
        self._write(
            f"[audit] round {record.round}: accuracy={format_value(record.accuracy, '.4f')} "
            f"clients={len(record.clients)} leakage={format_value(record.leakage_rate, '.2f')} "
            f"leakage_95ci={format_interval(record.leakage_low, record.leakage_high, '.2f')} "
            f"borderline={format_value(record.borderline, 'd')} "
            f"semsim={format_value(record.mean_semsim, '.3f')} psnr={format_value(record.mean_psnr, '.2f')} "
            f"ssim={format_value(record.mean_ssim, '.3f')} attack_s={record.attack_seconds:.1f} "
            f"status={record.status}"
        )

    def close(self, report: PrivacyReport) -> None:
        worst = report.worst_round()
        self._write(f"[audit] done: {len(report.rounds)} rounds; worst round: "
                    f"{format_value(worst.round if worst else None, 'd')}")


def read_jsonl(path: str | Path) -> PrivacyReport:
    """Rebuild a report from a JSONL journal; a truncated last line (killed run) is ignored.

    Raises ValueError naming the file and line when the journal is not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no report journal at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    report: PrivacyReport | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the line a killed run was writing
            raise ValueError(f"{path}:{number}: not valid JSON") from None
        kind = entry.pop("type", None) if isinstance(entry, dict) else None
        if kind == "run":
            report = PrivacyReport.model_validate(entry)
        elif kind == "round":
            if report is None:
                raise ValueError(f"{path}:{number}: round before the run header")
            report.add_round(RoundRecord.model_validate(entry))
        else:
            raise ValueError(f"{path}:{number}: unknown entry (expected type 'run' or 'round')")
    if report is None:
        raise ValueError(f"{path}: empty journal (no run header)")
    report._run_dir = path.parent
    return report
