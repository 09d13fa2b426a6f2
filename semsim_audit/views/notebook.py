"""Notebook views: a report (and the sweep's pages) as HTML fragments for Jupyter's ``_repr_html_``.

The pieces are those of ``report.html``; the page's style is scoped to one wrapper ``<div>``, so a
notebook's own layout is left alone. Plots are drawn with matplotlib's Figure API and inlined as
base64 PNG: no backend is switched, no pyplot state is touched.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from semsim_audit.report import PrivacyReport
from semsim_audit.views.files import figure_png, rounds_figure, saved_image
from semsim_audit.views.html import STYLE, _client_section, _header, _rounds_table

__all__ = ["SCOPE", "report_html", "page_fragment"]

SCOPE = "semsim-audit"


def _scoped(style: str) -> str:
    """``style`` with every selector confined to the wrapper (``body`` becomes the wrapper itself)."""
    def scope(match: re.Match[str]) -> str:
        selectors = [selector.strip() for selector in match.group(1).split(",")]
        return ", ".join(f".{SCOPE}" if s == "body" else f".{SCOPE} {s}" for s in selectors) + " {"

    return re.sub(r"([^{}]+)\{", scope, style)


def _fragment(body: str) -> str:
    return f"<div class='{SCOPE}'><style>{_scoped(STYLE)}</style>\n{body}\n</div>"


def page_fragment(page: str) -> str:
    """One of our self-contained pages (styled with ``STYLE``) as a fragment: its body, the style scoped."""
    start, end = page.find("<body>"), page.rfind("</body>")
    return _fragment(page[start + len("<body>"):end] if 0 <= start < end else page)


def _pairs(report: PrivacyReport, run_dir: Path, limit: int) -> str:
    """Up to ``limit`` saved original/reconstruction pairs, the worst round's first."""
    worst = report.worst_round()
    records = sorted(report.rounds, key=lambda record: record is not worst)  # stable: then round order
    sections: list[str] = []
    shown = 0
    for record in records:
        for audit in record.clients:
            saved = [s for s in audit.scores if saved_image(run_dir, s.original_image) is not None
                     and saved_image(run_dir, s.reconstruction_image) is not None][:limit - shown]
            if saved:
                sections.append(_client_section(run_dir, record.round,
                                                audit.model_copy(update={"scores": saved})))
                shown += len(saved)
            if shown >= limit:
                break
        if shown >= limit:
            break
    if not sections:
        return ""
    total = sum(len(audit.scores) for record in report.rounds for audit in record.clients)
    return (f"<h2>Reconstructions: {shown} of {total} pair(s), the worst round first (originals above; "
            "report.html in the run folder has every pair)</h2>\n" + "\n".join(sections))


def report_html(report: PrivacyReport, run_dir: str | Path | None = None, *, max_pairs: int = 6) -> str:
    """The report for a notebook: its header, the per-round table, the accuracy and leakage plot, and
    up to ``max_pairs`` original/reconstruction pairs whose images are saved in ``run_dir``."""
    figure = rounds_figure(report)
    plot = "" if figure is None else (
        "<h2>Accuracy and leakage per round</h2><img class='plot' alt='accuracy and leakage per round' "
        f"src='data:image/png;base64,{base64.b64encode(figure_png(figure)).decode('ascii')}'>")
    pairs = "" if run_dir is None else _pairs(report, Path(run_dir), max_pairs)
    parts = (_header(report), _rounds_table(report), plot, pairs)
    return _fragment("\n".join(part for part in parts if part))
