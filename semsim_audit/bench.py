"""The privacy-utility sweep: defense specs, the cell grid, resumable state, aggregation, views.

A sweep runs one audited federated training per cell (defense x strength x seed) with everything
else fixed, and compares the cells on final accuracy and leakage. This module is the sweep's logic
and its files; the defenses and their run-config keys are those of
:mod:`semsim_audit.strategies.defenses`, and the ``semsim-audit bench`` command passes in the
function that runs one cell.

Output folder::

    sweep.json                   the fixed settings (a resumed sweep must match them)
    cells/<cell id>/             the cell's run folder (report.jsonl, ...) and result.json,
                                 written last and atomically: present = the cell finished
    results.csv, results.json    one row per defense and strength, mean and std over seeds
    tradeoff.png, report.html    accuracy against leakage rate, with the Pareto front
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from matplotlib import colormaps
from matplotlib.figure import Figure
from rich.table import Table

from semsim_audit.report import PrivacyReport, format_value, leakage_rate, mean, pooled_scores
from semsim_audit.strategies.defenses import DEFENSES, Strength
from semsim_audit.views.html import STYLE, data_uri

__all__ = [
    "DEFENSES", "DefenseSpec", "Cell", "CellResult", "Row", "METRICS",
    "parse_defense", "parse_defense_option", "cell_grid", "result_from_report", "SweepState",
    "run_sweep", "aggregate", "pareto_front", "results_table", "write_csv", "write_json",
    "plot_tradeoff", "render_html", "write_outputs",
]

METRICS = ("accuracy", "leakage_rate", "mean_semsim", "mean_psnr", "mean_ssim")


@dataclass(frozen=True)
class DefenseSpec:
    """One ``--defense`` argument: a defense and the strengths to sweep."""

    name: str
    strengths: tuple[Strength, ...]


def parse_defense(spec: str) -> DefenseSpec:
    """Parse ``"none"``, ``"noise:0.001,0.01"``, ``"quantize:sign,4"``...; ValueError names the problem."""
    name, _, values = spec.strip().partition(":")
    name = name.strip()
    if name not in DEFENSES:
        raise ValueError(f"--defense {spec!r}: unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    kind = DEFENSES[name]
    if kind.parse is None:
        if values.strip():
            raise ValueError(f"--defense {spec!r}: {name!r} takes no strengths")
        return DefenseSpec(name, (None,))
    texts = [v.strip() for v in values.split(",")] if values.strip() else []
    if not texts or any(not t for t in texts):
        raise ValueError(f"--defense {spec!r}: give strengths as {name}:v1,v2,... ({kind.meaning})")
    strengths: list[Strength] = []
    for text in texts:
        try:
            value = kind.parse(text)
        except ValueError as error:
            raise ValueError(f"--defense {spec!r}: {error} ({kind.meaning})") from None
        if value not in strengths:
            strengths.append(value)
    return DefenseSpec(name, tuple(strengths))


def parse_defense_option(text: str) -> tuple[str, Strength]:
    """Parse ``"noise.clip=1.0"`` into the run-config item ``("defense.noise.clip", 1.0)``."""
    name, sep, value = text.partition("=")
    defense, dot, option = name.strip().partition(".")
    kind = DEFENSES.get(defense)
    if not sep or not dot or kind is None or option not in kind.options:
        known = [f"{d}.{o}" for d, k in DEFENSES.items() for o in k.options]
        raise ValueError(f"--defense-option {text!r}: expected NAME=VALUE, NAME one of {', '.join(known)}")
    try:
        return f"defense.{defense}.{option}", kind.options[option](value.strip())
    except ValueError as error:
        raise ValueError(f"--defense-option {text!r}: {error}") from None


def _strength_text(value: Strength) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Cell:
    """One audited training run of the sweep."""

    defense: str
    strength: Strength
    seed: int

    @property
    def label(self) -> str:
        return self.defense if self.strength is None else f"{self.defense} {_strength_text(self.strength)}"

    @property
    def cell_id(self) -> str:
        """A file-system-safe, unique folder name."""
        text = self.defense if self.strength is None else f"{self.defense}-{_strength_text(self.strength)}"
        return re.sub(r"[^A-Za-z0-9.+-]", "_", text) + f"-seed{self.seed}"

    def run_config(self, options: Mapping[str, Strength] | None = None) -> dict[str, Any]:
        """The run config the cell's clients (and server) get: strength, its options, the seed."""
        config: dict[str, Any] = {"defense.seed": self.seed}
        kind = DEFENSES[self.defense]
        if kind.key is not None:
            config[kind.key] = self.strength
            prefix = f"defense.{self.defense}."
            config.update({k: v for k, v in (options or {}).items() if k.startswith(prefix)})
        return config


def cell_grid(specs: Sequence[DefenseSpec], seeds: Sequence[int]) -> list[Cell]:
    """Every (defense, strength, seed), defenses in the given order, duplicates dropped."""
    if not specs:
        raise ValueError("--defense: give at least one defense")
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    cells: list[Cell] = []
    for spec in specs:
        for strength in spec.strengths:
            for seed in seeds:
                cell = Cell(spec.name, strength, int(seed))
                if cell not in cells:
                    cells.append(cell)
    return cells


@dataclass
class CellResult:
    """What one cell measured (pooled over its audited rounds), or why it failed."""

    defense: str
    strength: Strength
    seed: int
    status: Literal["ok", "failed"]
    reason: str | None = None
    accuracy: float | None = None
    leakage_rate: float | None = None
    mean_semsim: float | None = None
    mean_psnr: float | None = None
    mean_ssim: float | None = None
    reconstructions: int = 0
    rounds: int = 0
    seconds: float = 0.0

    @property
    def cell(self) -> Cell:
        return Cell(self.defense, self.strength, self.seed)


def result_from_report(cell: Cell, report: PrivacyReport, seconds: float) -> CellResult:
    """Final accuracy (last round that has one) and leakage pooled over every scored reconstruction."""
    accuracies = [r.accuracy for r in report.rounds if r.accuracy is not None]
    scores = pooled_scores(c for r in report.rounds for c in r.clients)
    return CellResult(
        cell.defense, cell.strength, cell.seed, "ok",
        accuracy=accuracies[-1] if accuracies else None,
        leakage_rate=leakage_rate(scores),
        mean_semsim=mean(s.semsim for s in scores),
        mean_psnr=mean(s.psnr for s in scores),
        mean_ssim=mean(s.ssim for s in scores),
        reconstructions=len(scores), rounds=len(report.rounds), seconds=seconds,
    )


def _write_json_atomic(path: Path, payload: Any) -> None:
    """Write then rename: a sweep killed mid-write never leaves a half file that reads as finished."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, allow_nan=False, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class SweepState:
    """The sweep's output folder: its fixed settings and the finished cells."""

    def __init__(self, out_dir: str | Path, settings: Mapping[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.settings = json.loads(json.dumps(dict(settings), default=str))

    def open(self) -> None:
        """Create the folder, or check that the sweep in it was made with the same settings."""
        path = self.out_dir / "sweep.json"
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            keys = set(saved) | set(self.settings)
            changed = sorted(k for k in keys if saved.get(k) != self.settings.get(k))
            if changed:
                raise ValueError(f"--out {self.out_dir}: holds a sweep with other settings "
                                 f"({', '.join(changed)}); resume with the same ones or use another folder")
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, self.settings)

    def cell_dir(self, cell: Cell) -> Path:
        return self.out_dir / "cells" / cell.cell_id

    def load(self, cell: Cell) -> CellResult | None:
        """The cell's saved result, or None when it has not finished (or its file is not ours)."""
        path = self.cell_dir(cell) / "result.json"
        if not path.is_file():
            return None
        try:
            return CellResult(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None

    def save(self, result: CellResult) -> None:
        folder = self.cell_dir(result.cell)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(folder / "result.json", asdict(result))


def run_sweep(cells: Sequence[Cell], state: SweepState,
              run_cell: Callable[[Cell, Path], PrivacyReport],
              on_done: Callable[[CellResult, bool], None] | None = None) -> list[CellResult]:
    """Run every cell not finished yet; a cell that raises is recorded as failed and the sweep goes on.

    ``on_done(result, skipped)`` is called after each cell (``skipped``: finished by an earlier run).
    Failed cells are tried again by the next run; finished ones never are.
    """
    state.open()
    results = []
    for cell in cells:
        saved = state.load(cell)
        if saved is not None and saved.status == "ok":
            results.append(saved)
            if on_done:
                on_done(saved, True)
            continue
        folder = state.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            report = run_cell(cell, folder)
            result = result_from_report(cell, report, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - one bad cell must not end the sweep
            last = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
            where = f" (at {Path(last.filename).name}:{last.lineno})" if last else ""
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:300] + where
            result = CellResult(cell.defense, cell.strength, cell.seed, "failed", reason=reason,
                                seconds=time.perf_counter() - started)
        state.save(result)
        results.append(result)
        if on_done:
            on_done(result, False)
    return results


@dataclass
class Row:
    """One defense and strength: mean and standard deviation over its finished seeds."""

    defense: str
    strength: Strength
    seeds: int
    failed: int
    mean: dict[str, float | None]
    std: dict[str, float | None]
    pareto: bool = False

    @property
    def label(self) -> str:
        return Cell(self.defense, self.strength, 0).label


def _std(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return 0.0
    centre = sum(values) / len(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def aggregate(results: Sequence[CellResult]) -> list[Row]:
    """Group the cells by defense and strength (first-seen order); sample std over seeds."""
    groups: dict[tuple[str, Strength], list[CellResult]] = {}
    for result in results:
        groups.setdefault((result.defense, result.strength), []).append(result)
    rows = []
    for (defense, strength), members in groups.items():
        ok = [r for r in members if r.status == "ok"]
        means: dict[str, float | None] = {}
        stds: dict[str, float | None] = {}
        for metric in METRICS:
            values = [v for r in ok if (v := getattr(r, metric)) is not None and math.isfinite(v)]
            means[metric] = mean(values)
            stds[metric] = _std(values)
        rows.append(Row(defense, strength, len(ok), len(members) - len(ok), means, stds))
    for row, on_front in zip(rows, pareto_front(rows), strict=True):
        row.pareto = on_front
    return rows


def pareto_front(rows: Sequence[Row]) -> list[bool]:
    """For each row: True when no other row has accuracy >= and leakage <=, one of them strictly."""
    points = [(r.mean["accuracy"], r.mean["leakage_rate"]) for r in rows]
    front = []
    for accuracy, leakage in points:
        if accuracy is None or leakage is None:
            front.append(False)
            continue
        dominated = any(a is not None and k is not None and a >= accuracy and k <= leakage
                        and (a > accuracy or k < leakage) for a, k in points)
        front.append(not dominated)
    return front


_COLUMNS = (("accuracy", "final accuracy", ".3f"), ("leakage_rate", "leakage rate", ".2f"),
            ("mean_semsim", "mean SemSim (lower = closer)", ".3f"), ("mean_psnr", "PSNR dB", ".1f"),
            ("mean_ssim", "SSIM", ".3f"))


def _mean_std(row: Row, metric: str, spec: str) -> str:
    text, std = format_value(row.mean[metric], spec), row.std[metric]
    return f"{text} ± {std:{spec}}" if row.mean[metric] is not None and std else text


def results_table(rows: Sequence[Row], title: str = "Privacy-utility sweep") -> Table:
    """The sweep as a rich table: mean ± std over seeds; Pareto-optimal rows marked."""
    table = Table(title=title)
    table.add_column("defense")
    table.add_column("seeds", justify="right")
    for _, header, _ in _COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("Pareto", justify="center")
    for row in rows:
        seeds = str(row.seeds) + (f" ({row.failed} failed)" if row.failed else "")
        table.add_row(row.label, seeds, *(_mean_std(row, m, s) for m, _, s in _COLUMNS),
                      "*" if row.pareto else "", style="bold" if row.pareto else None)
    return table


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """One line per defense and strength: mean and std of every metric."""
    path = Path(path)
    header = ["defense", "strength", "seeds", "failed", "pareto"]
    header += [f"{m}_{part}" for m in METRICS for part in ("mean", "std")]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            values: list[Any] = [row.defense, "" if row.strength is None else row.strength, row.seeds,
                                 row.failed, int(row.pareto)]
            for metric in METRICS:
                values += ["" if row.mean[metric] is None else row.mean[metric],
                           "" if row.std[metric] is None else row.std[metric]]
            writer.writerow(values)
    return path


def write_json(rows: Sequence[Row], results: Sequence[CellResult], settings: Mapping[str, Any],
               path: str | Path) -> Path:
    """The settings, every cell's result and the aggregated rows."""
    path = Path(path)
    payload = {"settings": dict(settings), "rows": [asdict(r) for r in rows],
               "cells": [asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str), encoding="utf-8")
    return path


def plot_tradeoff(rows: Sequence[Row], path: str | Path) -> Path | None:
    """Accuracy against leakage rate, error bars over seeds, the Pareto front as a line."""
    points = [r for r in rows if r.mean["accuracy"] is not None and r.mean["leakage_rate"] is not None]
    if not points:
        return None
    figure = Figure(figsize=(7, 5))
    axes = figure.subplots()
    defenses = list(dict.fromkeys(r.defense for r in points))
    colours = colormaps["tab10"]
    for index, defense in enumerate(defenses):
        group = [r for r in points if r.defense == defense]
        axes.errorbar([r.mean["leakage_rate"] for r in group], [r.mean["accuracy"] for r in group],
                      xerr=[r.std["leakage_rate"] or 0.0 for r in group],
                      yerr=[r.std["accuracy"] or 0.0 for r in group],
                      fmt="o", capsize=3, color=colours(index % 10), label=defense)
        for row in group:
            axes.annotate(row.label, (row.mean["leakage_rate"], row.mean["accuracy"]), fontsize=7,
                          xytext=(4, 4), textcoords="offset points")
    front = sorted((r for r in points if r.pareto), key=lambda r: r.mean["leakage_rate"])
    if front:
        axes.plot([r.mean["leakage_rate"] for r in front], [r.mean["accuracy"] for r in front],
                  "k--", linewidth=1, label="Pareto front")
    axes.set_xlim(-0.05, 1.05)  # a rate: the whole range, so sweeps compare by eye
    axes.set_xlabel("leakage rate (share of reconstructions recognizable; lower = more private)")
    axes.set_ylabel("final accuracy (higher = more useful)")
    axes.set_title("Privacy-utility trade-off")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


def render_html(rows: Sequence[Row], results: Sequence[CellResult], settings: Mapping[str, Any],
                plot: str | Path | None = None) -> str:
    """The sweep as one self-contained page in the run report's style."""
    def esc(value: object) -> str:
        return html.escape(str(value), quote=True)

    head = "".join(f"<th>{esc(h)}</th>" for h in ["defense", "seeds", *(c[1] for c in _COLUMNS), "Pareto"])
    body = "".join(
        "<tr>" + f"<td class='text'>{esc(r.label)}</td><td>{r.seeds}"
        + (f" ({r.failed} failed)" if r.failed else "") + "</td>"
        + "".join(f"<td>{esc(_mean_std(r, m, s))}</td>" for m, _, s in _COLUMNS)
        + f"<td>{'&#9733;' if r.pareto else ''}</td></tr>" for r in rows)
    failed = [r for r in results if r.status == "failed"]
    failures = ("<h2>Failed cells</h2><ul>"
                + "".join(f"<li>{esc(r.cell.label)} seed {r.seed}: {esc(r.reason)}</li>" for r in failed)
                + "</ul>") if failed else ""
    plot_html = (f"<h2>Accuracy against leakage</h2><img class='plot' alt='trade-off plot' "
                 f"src='{data_uri(plot)}'>") if plot else ""
    meanings = "".join(f"<tr><th class='text'>{esc(n)}</th><td>{esc(k.meaning)}</td></tr>"
                       for n, k in DEFENSES.items())
    config = esc(json.dumps(dict(settings), indent=2, sort_keys=True, default=str))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>semsim-audit defense sweep</title><style>{STYLE}</style></head><body>\n"
            "<h1>Defense sweep: privacy against utility</h1>"
            "<p>Mean ± standard deviation over seeds. Leakage pooled over every audited round; "
            "&#9733; = on the Pareto front (no other defense is both more accurate and less leaky).</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"{failures}{plot_html}<h2>Defenses</h2><table class='glossary'><tbody>{meanings}</tbody></table>"
            f"<h2>Settings</h2><pre>{config}</pre>\n</body></html>\n")


def write_outputs(rows: Sequence[Row], results: Sequence[CellResult], settings: Mapping[str, Any],
                  out_dir: str | Path) -> dict[str, Path]:
    """results.csv, results.json, tradeoff.png (when there is something to plot) and report.html."""
    out_dir = Path(out_dir)
    files = {"csv": write_csv(rows, out_dir / "results.csv"),
             "json": write_json(rows, results, settings, out_dir / "results.json")}
    plot = plot_tradeoff(rows, out_dir / "tradeoff.png")
    if plot is not None:
        files["plot"] = plot
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(rows, results, settings, plot), encoding="utf-8")
    files["html"] = html_path
    return files
