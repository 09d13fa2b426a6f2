"""The rich console view of a :class:`PrivacyReport`: the per-round table, the closing panel, a live sink.

The table and panel are pure functions of the report, so a run watched live and the same run
re-rendered later from its JSONL journal print the same thing.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from semsim_audit.report import LogSink, PrivacyReport, RoundRecord, format_value

__all__ = [
    "ROUND_COLUMNS", "LEAK_COLUMN", "round_cells", "leakage_cell", "leakage_interval", "calibration_line",
    "leakage_level", "rounds_table", "summary_panel", "render_report", "export_svg", "ConsoleSink",
]

# (header, meaning): the README's column glossary is written from the same words.
ROUND_COLUMNS: tuple[tuple[str, str], ...] = (
    ("round", "federated round number"),
    ("acc", "global model accuracy after the round"),
    ("loss", "global model loss after the round"),
    ("audited", "clients whose update was attacked (failed audits in brackets)"),
    ("leak (95% CI)", "leakage rate: share of reconstructions SemSim judges recognizable; in brackets its "
                      "95% Wilson interval over the round's judged reconstructions, in percent"),
    ("bord.", "borderline pairs: SemSim distance within the checkpoint's borderline band around its "
              "threshold (n/a when the checkpoint has no band)"),
    ("SemSim", "mean SemSim distance, original vs reconstruction (lower = more leakage)"),
    ("PSNR", "mean PSNR in dB (higher = closer in pixels)"),
    ("SSIM", "mean SSIM (higher = closer in structure)"),
    ("LPIPS", "mean LPIPS (lower = closer; n/a without its weights)"),
    ("atk s", "seconds spent attacking in this round, all audited clients together"),
    ("status", "ok / partial / failed / not audited"),
)

LEAK_COLUMN = "leak (95% CI)"

_STATUS_STYLE = {"ok": "green", "partial": "yellow", "failed": "bold red", "not audited": "dim"}

# Loggers that write straight to the terminal during a run and would tear the live table.
_ROUTED_LOGGERS = ("flwr", "ray", "semsim_audit")


def _audited(record: RoundRecord) -> str:
    failed = sum(c.status == "failed" for c in record.clients)
    return f"{len(record.clients)} ({failed} fail)" if failed else str(len(record.clients))


def round_cells(record: RoundRecord) -> list[str]:
    """The plain-text cells of one table row, in :data:`ROUND_COLUMNS` order (console and HTML share them)."""
    return [
        str(record.round),
        format_value(record.accuracy, ".1%"),
        format_value(record.loss, ".3f"),
        _audited(record),
        leakage_cell(record),
        format_value(record.borderline, "d"),
        format_value(record.mean_semsim, ".3f"),
        format_value(record.mean_psnr, ".1f"),
        format_value(record.mean_ssim, ".3f"),
        format_value(record.mean_lpips, ".3f"),
        f"{record.attack_seconds:.1f}",
        record.status,
    ]


def leakage_cell(record: RoundRecord) -> str:
    """The leakage rate with its 95% interval, e.g. "33% (6-79)", or "n/a"."""
    if record.leakage_rate is None:
        return "n/a"
    if record.leakage_low is None or record.leakage_high is None:
        return f"{record.leakage_rate:.0%}"
    return f"{record.leakage_rate:.0%} ({100 * record.leakage_low:.0f}-{100 * record.leakage_high:.0f})"


def leakage_interval(record: RoundRecord) -> str:
    """The 95% interval of a round's leakage rate in percent, e.g. "19-81%", or "n/a"."""
    if record.leakage_low is None or record.leakage_high is None:
        return "n/a"
    return f"{100 * record.leakage_low:.0f}-{100 * record.leakage_high:.0f}%"


def calibration_line(semsim: dict[str, Any]) -> str | None:
    """How the checkpoint's threshold was calibrated, from ``PrivacyReport.semsim``; None when unrecorded."""
    calibration = semsim.get("calibration") or {}
    if not calibration:
        return None
    balanced = calibration.get("balanced_accuracy")
    line = f"calibrated on {calibration.get('set', 'unrecorded pairs')}"
    if isinstance(balanced, int | float):
        line += f", balanced accuracy {balanced:.2f} there"
    band = semsim.get("borderline_band")
    if isinstance(band, list | tuple) and len(band) == 2:
        line += f"; borderline band {band[0]:.3f}-{band[1]:.3f}"
    return line


def leakage_level(value: float | None) -> str:
    """How alarming a leakage rate is: "none", "some", "high" or "unknown" (drives colours)."""
    if value is None:
        return "unknown"
    # Any recognizable reconstruction is a finding; half or more of them is a red flag.
    return "high" if value >= 0.5 else ("some" if value > 0 else "none")


_LEAKAGE_STYLE = {"high": "bold red", "some": "yellow", "none": "green", "unknown": "dim"}


def rounds_table(report: PrivacyReport, title: str | None = None) -> Table:
    """The per-round table: accuracy and loss beside the leakage of the audited clients."""
    table = Table(title=title, title_justify="left", header_style="bold", expand=False,
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
    for header, _ in ROUND_COLUMNS:
        table.add_column(header, justify="left" if header == "status" else "right", no_wrap=True)
    leakage_column = [h for h, _ in ROUND_COLUMNS].index(LEAK_COLUMN)
    for record in report.rounds:
        cells: list[str | Text] = list(round_cells(record))
        cells[leakage_column] = Text(str(cells[leakage_column]),
                                     style=_LEAKAGE_STYLE[leakage_level(record.leakage_rate)])
        cells[-1] = Text(record.status, style=_STATUS_STYLE.get(record.status, ""))
        table.add_row(*cells)
    return table


def _failure_reasons(report: PrivacyReport) -> list[str]:
    return [f"round {r.round}, client {c.node_id}: {c.reason or 'no reason given'}"
            for r in report.rounds for c in r.clients if c.status == "failed"]


def _notes(report: PrivacyReport) -> list[str]:
    """What an audit that ran still wants read (e.g. the training attacked differs from the declared)."""
    return [f"round {r.round}, client {c.node_id}: {c.note}" for r in report.rounds for c in r.clients
            if c.note]


def _listed(lines: Text, heading: str, items: list[str], style: str, shown: int = 5) -> None:
    if not items:
        return
    lines.append(f"\n{heading} {len(items)}", style=f"bold {style}")
    for item in items[:shown]:
        lines.append(f"\n  {item}", style=style)
    if len(items) > shown:
        lines.append(f"\n  ... and {len(items) - shown} more", style=style)


def summary_panel(report: PrivacyReport) -> Panel:
    """The closing panel: worst round and client, SemSim checkpoint kind, threat model, failures."""
    lines = Text()
    worst = report.worst_round()
    if worst is None:
        lines.append("worst round   ", style="bold").append("n/a (no audited round has a score)\n")
    else:
        lines.append("worst round   ", style="bold").append(
            f"{worst.round}: leakage {format_value(worst.leakage_rate, '.0%')} "
            f"(95% CI {leakage_interval(worst)}, {format_value(worst.borderline, 'd')} borderline), "
            f"mean SemSim {format_value(worst.mean_semsim, '.3f')}, "
            f"mean PSNR {format_value(worst.mean_psnr, '.1f')} dB\n")
        lines.append("worst client  ", style="bold").append(
            f"{format_value(worst.worst_client, 'd')} (in round {worst.round})\n")
    kind = report.checkpoint_kind
    threshold = report.semsim.get("threshold")
    lines.append("SemSim        ", style="bold").append(
        f"{kind} checkpoint", style="yellow" if kind != "human" else "")
    if isinstance(threshold, int | float):
        lines.append(f", recognizable at distance <= {threshold:.3f}")
    calibration = calibration_line(report.semsim)
    if calibration is not None:
        lines.append(f"\n              {calibration}")
    if kind != "human":
        lines.append("\n              not trained on human annotations: a proxy for recognizability",
                     style="yellow")
    lines.append("\n")
    lines.append("attack        ", style="bold").append(f"{report.attack}\n")
    lines.append("threat model  ", style="bold").append(report.threat_model)
    _listed(lines, "failed audits", _failure_reasons(report), "red")
    _listed(lines, "audit errors ", report.machinery_errors(), "red")
    _listed(lines, "notes        ", _notes(report), "yellow")
    return Panel(lines, title=f"privacy audit {report.run_id}", title_align="left", expand=False)


def render_report(report: PrivacyReport, console: Console) -> None:
    """Print the finished table and the closing panel (what `semsim-audit report` shows)."""
    console.print(rounds_table(report, title=f"rounds of run {report.run_id}"))
    console.print(summary_panel(report))


def export_svg(report: PrivacyReport, path: str | Path, width: int = 88) -> Path:
    """Write the table and closing panel as an SVG terminal screenshot (rich's exporter)."""
    recorder = Console(record=True, width=width, file=io.StringIO(), force_terminal=True,
                       color_system="truecolor")
    render_report(report, recorder)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recorder.save_svg(str(path), title=f"semsim-audit - run {report.run_id}")
    return path


class ConsoleSink:
    """A :class:`semsim_audit.report.ReportSink` that keeps a live table on the terminal.

    On a terminal the table grows one row per finished round above a progress bar while the run
    is on; on close the live view is replaced by the final table and the closing panel. Where
    the console is not a terminal (a log file, CI) each round is one plain line instead, and the
    table and panel follow at the end. For the duration, log records of Flower, Ray and this
    package go through the same console, so they print above the live view instead of tearing
    it (warnings and errors only: INFO lines would bury the table).
    """

    def __init__(self, console: Console | None = None, *, total_rounds: int | None = None,
                 log_level: int = logging.WARNING) -> None:
        self.console = console or Console()
        self.total_rounds = total_rounds
        self.log_level = log_level
        self.report = PrivacyReport()
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console)
        self._task = self._progress.add_task("waiting", total=total_rounds)
        # The running attack's iterations (a round's audits may still run while the next trains).
        self._attack_task = self._progress.add_task("attack", total=None, visible=False)
        self._live: Live | None = None
        self._lines = LogSink(lambda line: self.console.print(line, highlight=False, markup=False,
                                                              soft_wrap=True))
        self._saved_loggers: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []

    def _view(self) -> RenderableType:
        return Group(rounds_table(self.report, title=f"privacy audit {self.report.run_id}"), self._progress)

    def _next_description(self) -> str:
        upcoming = (self.report.rounds[-1].round + 1) if self.report.rounds else 1
        if self.total_rounds is not None and upcoming > self.total_rounds:
            return "waiting for the last audits, then writing the report"
        return f"round {upcoming}: training and attacking"

    def _route_logs(self) -> None:
        handler = RichHandler(console=self.console, show_path=False, level=self.log_level)
        for name in _ROUTED_LOGGERS:
            logger = logging.getLogger(name)
            self._saved_loggers.append((logger, list(logger.handlers), logger.propagate, logger.level))
            for old in list(logger.handlers):
                logger.removeHandler(old)
            logger.addHandler(handler)
            logger.propagate = False
            # The sink promises warnings above the table, whatever level a caller left behind.
            logger.setLevel(self.log_level)

    def _restore_logs(self) -> None:
        for logger, handlers, propagate, level in self._saved_loggers:
            for current in list(logger.handlers):
                logger.removeHandler(current)
            for handler in handlers:
                logger.addHandler(handler)
            logger.propagate = propagate
            logger.setLevel(level)
        self._saved_loggers.clear()

    def start(self, report: PrivacyReport) -> None:
        self.report = report.model_copy(deep=True)
        self._route_logs()
        if not self.console.is_terminal:
            # A log file or CI: no cursor tricks; one line per round, the table at the end.
            self._lines.start(self.report)
            return
        self._progress.update(self._task, description=self._next_description())
        # redirect_stdout/stderr: stray prints (Ray worker output included) land above the view.
        self._live = Live(self._view(), console=self.console, refresh_per_second=4,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()

    def attack_progress(self, server_round: int, done: int, total: int) -> None:
        """Move the attack bar: ``done`` of ``total`` iterations of round ``server_round``'s attack."""
        if self._live is None:
            return
        self._progress.update(self._attack_task, completed=done, total=total, visible=done < total,
                              description=f"round {server_round}: attack iterations")

    def write_round(self, record: RoundRecord) -> None:
        self.report.add_round(record)
        if self._live is None:
            self._lines.write_round(record)
            return
        self._progress.update(self._task, completed=len(self.report.rounds),
                              description=self._next_description())
        self._live.update(self._view(), refresh=True)

    def close(self, report: PrivacyReport) -> None:
        self.report = report
        table = rounds_table(report, title=f"privacy audit {report.run_id}")
        if self._live is not None:
            # The final frame is the table without the progress bar.
            self._live.update(table, refresh=True)
            self._live.stop()
            self._live = None
        else:
            self.console.print(table)
        self._restore_logs()
        self.console.print(summary_panel(report))
