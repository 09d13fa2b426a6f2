"""The file views of a run folder: rounds.csv, scores.csv, report.json, plots and image grids (PNG).

A run folder (one per run, named by its start time) holds ``report.jsonl`` (the journal written
round by round), ``report.json``, ``rounds.csv``, ``scores.csv``, ``plots/rounds.png``, ``report.html``,
``console.svg`` and, when images were saved, ``images/round-<R>/client-<NODE>/`` with the
originals, the reconstructions and ``grid.png``. Everything except the journal and the saved
images can be rebuilt from the journal.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imread

from semsim_audit.report import (
    ClientAudit,
    PrivacyReport,
    ReconstructionRow,
    RoundRow,
    format_value,
    reconstruction_rows,
    round_rows,
)

__all__ = [
    "CSV_COLUMNS", "SCORES_CSV_COLUMNS", "RunFiles", "new_run_dir", "write_rounds_csv", "write_scores_csv",
    "write_report_json", "rounds_figure", "plot_rounds", "figure_png", "grid_path", "saved_image",
    "image_grid_figure", "write_image_grid", "write_image_grids",
]

CSV_COLUMNS: tuple[str, ...] = RoundRow._fields
SCORES_CSV_COLUMNS: tuple[str, ...] = ReconstructionRow._fields


@dataclass
class RunFiles:
    """Paths of the files a render wrote into a run folder."""

    report_json: Path
    rounds_csv: Path
    scores_csv: Path
    html: Path
    svg: Path | None = None
    plots: list[Path] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)


def new_run_dir(out: str | Path, when: datetime | None = None) -> Path:
    """Create and return a fresh run folder under ``out`` named by time (``run-YYYYmmdd-HHMMSS``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    stamp = (when or datetime.now()).strftime("run-%Y%m%d-%H%M%S")
    candidate, suffix = out / stamp, 1
    # Two runs started within the same second get -2, -3, ... rather than sharing a folder.
    while candidate.exists():
        suffix += 1
        candidate = out / f"{stamp}-{suffix}"
    candidate.mkdir(parents=True)
    return candidate


def _cell(value: object) -> object:
    return "" if value is None else value


def _write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a temporary file beside ``path``, then rename it: a reader never sees half a table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([_cell(value) for value in row] for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def write_rounds_csv(report: PrivacyReport, path: str | Path) -> Path:
    """One row per round; empty cells where a value is unknown (e.g. LPIPS without weights)."""
    return _write_csv(path, CSV_COLUMNS, round_rows(report))


def write_scores_csv(report: PrivacyReport, path: str | Path) -> Path:
    """One row per scored reconstruction (the rows of ``report.to_dataframe("reconstruction")``)."""
    return _write_csv(path, SCORES_CSV_COLUMNS, reconstruction_rows(report))


def write_report_json(report: PrivacyReport, path: str | Path) -> Path:
    """The whole :class:`PrivacyReport` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def rounds_figure(report: PrivacyReport) -> Figure | None:
    """Accuracy (top) and leakage rate with mean SemSim (bottom) per round; None without rounds."""
    if not report.rounds:
        return None
    rounds = [r.round for r in report.rounds]

    def series(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    figure = Figure(figsize=(7.0, 5.0), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(rounds, series([r.accuracy for r in report.rounds]), marker="o", color="tab:blue")
    top.set_ylabel("accuracy")
    top.set_ylim(0.0, 1.0)
    top.grid(alpha=0.3)
    top.set_title(f"run {report.run_id}: {report.attack}, SemSim {report.checkpoint_kind} checkpoint")
    bottom.plot(rounds, series([r.leakage_rate for r in report.rounds]), marker="o", color="tab:red",
                label="leakage rate")
    bottom.fill_between(rounds, series([r.leakage_low for r in report.rounds]),
                        series([r.leakage_high for r in report.rounds]), color="tab:red", alpha=0.15,
                        label="95% interval")
    bottom.set_ylabel("leakage rate (95% interval)", color="tab:red")
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_xlabel("round")
    bottom.grid(alpha=0.3)
    semsim_axis = bottom.twinx()
    semsim_axis.plot(rounds, series([r.mean_semsim for r in report.rounds]), marker="s", linestyle="--",
                     color="tab:gray")
    semsim_axis.set_ylabel("mean SemSim (lower = leaks more)", color="tab:gray")
    bottom.set_xticks(rounds)
    return figure


def plot_rounds(report: PrivacyReport, path: str | Path) -> Path | None:
    """:func:`rounds_figure` as a PNG file; None without rounds."""
    figure = rounds_figure(report)
    if figure is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes, in memory (for notebooks and TensorBoard)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def grid_path(run_dir: str | Path, round_number: int, node_id: int) -> Path:
    """Where the grid of one client's audit in one round lives inside the run folder."""
    return Path(run_dir) / "images" / f"round-{round_number}" / f"client-{node_id}" / "grid.png"


def saved_image(run_dir: str | Path, relative: str | None) -> Path | None:
    """The saved image a report names, if it exists INSIDE the run folder; else None.

    Image paths come from a report file, which may not be ours: a path that leaves the run folder
    (absolute, or through ``..``) is refused, so rendering a report never reads, embeds or copies
    a file from elsewhere on the machine.
    """
    if not relative:
        return None
    root = Path(run_dir).resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def _load(run_dir: Path, relative: str | None) -> np.ndarray | None:
    path = saved_image(run_dir, relative)
    return None if path is None else imread(path)


def image_grid_figure(run_dir: str | Path, round_number: int, audit: ClientAudit) -> Figure | None:
    """Originals above reconstructions, each column labelled with SemSim and PSNR; None without images."""
    run_dir = Path(run_dir)
    pairs = [(s, _load(run_dir, s.original_image), _load(run_dir, s.reconstruction_image))
             for s in audit.scores]
    pairs = [(s, o, r) for s, o, r in pairs if o is not None and r is not None]
    if not pairs:
        return None
    columns = len(pairs)
    # Wide enough for the title even with one column: Flower node ids run to 20 digits.
    figure = Figure(figsize=(max(2.8, 1.6 * columns + 0.6), 4.1), dpi=100, layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False)
    for column, (score, original, reconstruction) in enumerate(pairs):
        for row, image in ((0, original), (1, reconstruction)):
            axis = axes[row][column]
            axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        verdict = {True: "recognizable", False: "not recogn.", None: ""}[score.recognizable]
        axes[0][column].set_title(f"original {score.original_index}", fontsize=8)
        axes[1][column].set_title(
            f"SemSim {format_value(score.semsim, '.3f')}\n"
            f"PSNR {format_value(score.psnr, '.1f', ' dB')}\n{verdict}",
            fontsize=8, color="tab:red" if score.recognizable else "black")
    axes[0][0].set_ylabel("original")
    axes[1][0].set_ylabel("reconstruction")
    figure.suptitle(f"round {round_number}, client {audit.node_id}\n{audit.attack}", fontsize=8)
    return figure


def write_image_grid(run_dir: str | Path, round_number: int, audit: ClientAudit) -> Path | None:
    """:func:`image_grid_figure` as ``grid.png`` in the audit's image folder; None without images."""
    figure = image_grid_figure(run_dir, round_number, audit)
    if figure is None:
        return None
    path = grid_path(run_dir, round_number, audit.node_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def write_image_grids(report: PrivacyReport, run_dir: str | Path) -> list[Path]:
    """One grid per audited client whose images were saved, in round order."""
    grids = []
    for record in report.rounds:
        for audit in record.clients:
            path = write_image_grid(run_dir, record.round, audit)
            if path is not None:
                grids.append(path)
    return grids

