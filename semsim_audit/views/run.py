"""Render a whole run folder from a report, during a run (a sink) or afterwards (`semsim-audit report`)."""

from __future__ import annotations

from pathlib import Path

from semsim_audit.report import PrivacyReport, RoundRecord
from semsim_audit.views.console import export_svg
from semsim_audit.views.files import (
    RunFiles,
    plot_rounds,
    write_image_grids,
    write_report_json,
    write_rounds_csv,
    write_scores_csv,
)
from semsim_audit.views.html import write_html

__all__ = ["render_run", "RunFolderSink"]


def render_run(report: PrivacyReport, run_dir: str | Path, *, svg: bool = True) -> RunFiles:
    """Write report.json, rounds.csv, scores.csv, plots, image grids, report.html and console.svg."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_rounds(report, run_dir / "plots" / "rounds.png")
    plots = [plot] if plot is not None else []
    return RunFiles(
        report_json=write_report_json(report, run_dir / "report.json"),
        rounds_csv=write_rounds_csv(report, run_dir / "rounds.csv"),
        scores_csv=write_scores_csv(report, run_dir / "scores.csv"),
        plots=plots,
        grids=write_image_grids(report, run_dir),
        html=write_html(report, run_dir, run_dir / "report.html", plots),
        svg=export_svg(report, run_dir / "console.svg") if svg else None,
    )


class RunFolderSink:
    """A :class:`semsim_audit.report.ReportSink` that keeps rounds.csv current and renders the rest on close.

    The journal (``report.jsonl``) is :class:`semsim_audit.report.JsonlSink`'s job; this sink writes
    the views: ``rounds.csv`` and ``scores.csv`` after every round, everything else (:func:`render_run`)
    at the end.
    """

    def __init__(self, run_dir: str | Path, *, svg: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.svg = svg
        self.report = PrivacyReport()
        self.files: RunFiles | None = None

    def start(self, report: PrivacyReport) -> None:
        self.report = report.model_copy(deep=True)
        self._write_tables()

    def write_round(self, record: RoundRecord) -> None:
        self.report.add_round(record)
        self._write_tables()

    def _write_tables(self) -> None:
        write_rounds_csv(self.report, self.run_dir / "rounds.csv")
        write_scores_csv(self.report, self.run_dir / "scores.csv")

    def close(self, report: PrivacyReport) -> None:
        self.files = render_run(report, self.run_dir, svg=self.svg)
