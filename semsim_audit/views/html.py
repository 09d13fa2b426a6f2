"""report.html: one self-contained page (styles inline, every image and plot as a base64 data URI).

The page opens offline from a mail attachment or a file share: it references no other file.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from semsim_audit.report import ClientAudit, PrivacyReport, ReconstructionScore, format_value
from semsim_audit.views.console import (
    LEAK_COLUMN,
    ROUND_COLUMNS,
    calibration_line,
    leakage_interval,
    leakage_level,
    round_cells,
)
from semsim_audit.views.files import saved_image

__all__ = ["STYLE", "data_uri", "render_html", "write_html"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.warn { background: #fff6d5; border: 1px solid #e0c050; padding: 0.6em 1em; }
.leak-high { color: #b00; font-weight: bold; } .leak-some { color: #a60; } .leak-none { color: #070; }
.status-failed { color: #b00; } .status-partial { color: #a60; }
.pairs td { text-align: center; vertical-align: top; font-size: 0.8em; }
.pairs img { width: 96px; height: 96px; image-rendering: pixelated; display: block; margin: auto; }
.recognizable { outline: 3px solid #b00; }
.missing { width: 96px; height: 96px; display: block; background: #eee; line-height: 96px; }
img.plot { max-width: 100%; }
.glossary td { text-align: left; }
"""

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def data_uri(path: str | Path) -> str:
    """The file as a ``data:`` URI (what the page embeds instead of linking)."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _threshold(report: PrivacyReport) -> str:
    threshold = report.semsim.get("threshold")
    return f", recognizable at SemSim &le; {threshold:.3f}" if isinstance(threshold, int | float) else ""


def _header(report: PrivacyReport) -> str:
    kind = report.checkpoint_kind
    parts = [f"<h1>Privacy audit, run {_esc(report.run_id)}</h1>",
             "<table><tbody>",
             f"<tr><th class='text'>started</th><td class='text'>{_esc(report.started_at)}</td></tr>",
             f"<tr><th class='text'>attack</th><td class='text'>{_esc(report.attack)}</td></tr>",
             f"<tr><th class='text'>threat model</th><td class='text'>{_esc(report.threat_model)}</td></tr>",
             f"<tr><th class='text'>SemSim checkpoint</th><td class='text'>{_esc(kind)}"
             f"{_threshold(report)}</td></tr>",
             f"<tr><th class='text'>SemSim calibration</th><td class='text'>"
             f"{_esc(calibration_line(report.semsim) or 'not recorded in this checkpoint')}</td></tr>",
             "</tbody></table>"]
    if kind != "human":
        parts.append(
            "<p class='warn'>SemSim was scored with a <b>" + _esc(kind) + "</b> checkpoint, not one trained "
            "on human annotations: read \"recognizable\" as a proxy judgement, not a human one.</p>")
    worst = report.worst_round()
    if worst is not None:
        parts.append(
            f"<p>Worst round: <b>{worst.round}</b> (leakage {format_value(worst.leakage_rate, '.0%')}, "
            f"95% interval {_esc(leakage_interval(worst))}, "
            f"{_esc(format_value(worst.borderline, 'd'))} borderline pair(s), "
            f"mean SemSim {format_value(worst.mean_semsim, '.3f')}); worst client in it: "
            f"<b>{_esc(format_value(worst.worst_client, 'd'))}</b>.</p>")
    return "\n".join(parts)


def _rounds_table(report: PrivacyReport) -> str:
    headers = "".join(
        f"<th{' class=text' if name == 'status' else ''} title='{_esc(meaning)}'>{_esc(name)}</th>"
        for name, meaning in ROUND_COLUMNS)
    leakage_column = [name for name, _ in ROUND_COLUMNS].index(LEAK_COLUMN)
    rows = []
    for record in report.rounds:
        cells = []
        for index, value in enumerate(round_cells(record)):
            if index == leakage_column:
                cells.append(f"<td class='leak-{leakage_level(record.leakage_rate)}'>{_esc(value)}</td>")
            elif index == len(ROUND_COLUMNS) - 1:
                cells.append(f"<td class='text status-{_esc(value.replace(' ', '-'))}'>{_esc(value)}</td>")
            else:
                cells.append(f"<td>{_esc(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<h2>Rounds</h2><table class='rounds'><thead><tr>" + headers + "</tr></thead><tbody>"
            + "\n".join(rows) + "</tbody></table>")


def _image(run_dir: Path, relative: str | None, alt: str, recognizable: bool | None = None) -> str:
    path = saved_image(run_dir, relative)
    if path is None:
        return "<span class='missing'>not saved</span>"
    css = " class='recognizable'" if recognizable else ""
    return f"<img{css} alt='{_esc(alt)}' title='{_esc(relative)}' src='{data_uri(path)}'>"


def _caption(score: ReconstructionScore) -> str:
    verdict = {True: "<b>recognizable</b>", False: "not recognizable", None: ""}[score.recognizable]
    if score.borderline:
        verdict += " (borderline)"
    labels = ""
    if score.true_label is not None or score.recovered_label is not None:
        labels = f"<br>label {_esc(score.true_label)} &rarr; {_esc(score.recovered_label)}"
    return (f"SemSim {format_value(score.semsim, '.3f')}<br>PSNR {format_value(score.psnr, '.1f', ' dB')}<br>"
            f"SSIM {format_value(score.ssim, '.3f')}<br>LPIPS {format_value(score.lpips, '.3f')}"
            f"{labels}<br>{verdict}")


def _client_section(run_dir: Path, round_number: int, audit: ClientAudit) -> str:
    scored = f", scored on the {_esc(audit.scored_on)}" if audit.scored_on else ""
    title = (f"<h3>Round {round_number}, client {_esc(audit.node_id)}: {_esc(audit.attack)}, "
             f"{_esc(audit.status)}, {audit.seconds:.1f} s, {audit.num_images} image(s){scored}</h3>")
    if audit.note:
        title += f"<p class='note'>{_esc(audit.note)}</p>"
    if audit.status != "ok":
        return title + f"<p class='status-failed'>{_esc(audit.reason or 'no reason given')}</p>"
    if not audit.scores:
        return title + "<p>No reconstruction was scored.</p>"
    originals = "".join(
        f"<td>{_image(run_dir, s.original_image, f'original {s.original_index}')}"
        f"original {s.original_index}</td>" for s in audit.scores)
    reconstructions = "".join(
        f"<td>{_image(run_dir, s.reconstruction_image, f'reconstruction {s.original_index}', s.recognizable)}"
        f"{_caption(s)}</td>" for s in audit.scores)
    return (title + "<table class='pairs'><tbody><tr>" + originals + "</tr><tr>" + reconstructions
            + "</tr></tbody></table>")


def _reconstructions(report: PrivacyReport, run_dir: Path) -> str:
    sections = [_client_section(run_dir, record.round, audit)
                for record in report.rounds for audit in record.clients]
    if not sections:
        return ""
    return "<h2>Reconstructions (originals above, reconstructions below)</h2>\n" + "\n".join(sections)


def _errors(report: PrivacyReport) -> str:
    errors = report.machinery_errors()
    if not errors:
        return ""
    items = "".join(f"<li>{_esc(error)}</li>" for error in errors)
    return f"<h2>Audit errors (the run went on)</h2><ul class='status-failed'>{items}</ul>"


def _glossary() -> str:
    rows = "".join(f"<tr><th class='text'>{_esc(name)}</th><td>{_esc(meaning)}</td></tr>"
                   for name, meaning in ROUND_COLUMNS)
    return f"<h2>Columns</h2><table class='glossary'><tbody>{rows}</tbody></table>"


def render_html(report: PrivacyReport, run_dir: str | Path, plots: Sequence[str | Path] = ()) -> str:
    """The whole page as a string; image paths in the report are resolved against ``run_dir``."""
    run_dir = Path(run_dir)
    plot_html = "".join(f"<img class='plot' alt='plot' src='{data_uri(p)}'>" for p in plots)
    config = _esc(json.dumps(report.config, indent=2, sort_keys=True, default=str))
    semsim = _esc(json.dumps(report.semsim, indent=2, sort_keys=True, default=str))
    body = "\n".join([
        _header(report),
        _rounds_table(report),
        f"<h2>Accuracy and leakage per round</h2>{plot_html}" if plot_html else "",
        _reconstructions(report, run_dir),
        _errors(report),
        _glossary(),
        f"<h2>Configuration</h2><pre>{config}</pre><h2>SemSim checkpoint</h2><pre>{semsim}</pre>",
    ])
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>semsim-audit run {_esc(report.run_id)}</title><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def write_html(report: PrivacyReport, run_dir: str | Path, path: str | Path,
               plots: Sequence[str | Path] = ()) -> Path:
    """Write :func:`render_html` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, run_dir, plots), encoding="utf-8")
    return path
