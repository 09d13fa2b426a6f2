"""The console, file and HTML views of a PrivacyReport, rendered live and from a saved journal."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console
from sample_run import make_run

from semsim_audit.report import LogSink, PrivacyReport, RoundRecord, SinkFanout, read_jsonl
from semsim_audit.views import (
    ConsoleSink,
    RunFolderSink,
    new_run_dir,
    render_report,
    render_run,
    rounds_table,
)
from semsim_audit.views.files import CSV_COLUMNS, grid_path
from semsim_audit.views.html import data_uri


def _text(renderable: object, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _image_files(report: PrivacyReport, run_dir: Path) -> list[Path]:
    return [run_dir / relative for record in report.rounds for audit in record.clients
            for score in audit.scores for relative in (score.original_image, score.reconstruction_image)
            if relative is not None]


def test_table_from_truncated_journal_equals_the_live_table(sample_run: tuple[PrivacyReport, Path]) -> None:
    report, run_dir = sample_run
    journal = run_dir / "report.jsonl"
    with journal.open("a", encoding="utf-8") as handle:
        handle.write('{"type": "round", "round": 4, "accur')  # a run killed while writing round 4

    reread = read_jsonl(journal)

    assert [r.round for r in reread.rounds] == [1, 2, 3]
    assert _text(rounds_table(reread)) == _text(rounds_table(report))
    assert "partial" in _text(rounds_table(reread))


@pytest.mark.parametrize("terminal", [True, False], ids=["live-terminal", "log-file"])
def test_console_sink_ends_with_the_same_table_and_the_closing_panel(
        sample_run: tuple[PrivacyReport, Path], terminal: bool) -> None:
    report, _ = sample_run
    console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=terminal)
    sink = ConsoleSink(console, total_rounds=3)
    sink.start(report.model_copy(update={"rounds": []}))
    for record in report.rounds:
        sink.write_round(record)
    sink.close(report)
    output = console.file.getvalue()  # type: ignore[attr-defined]

    table_lines = [line.rstrip() for line in _text(rounds_table(report)).splitlines() if line.strip()]
    final = output[output.rindex(table_lines[0]):]  # the last frame: the finished table
    assert [line.rstrip() for line in final.splitlines()[:len(table_lines)]] == table_lines
    assert "worst round   2" in final
    assert "proxy checkpoint" in final
    assert "round 2, client 22: attack diverged (NaN loss)" in final
    if not terminal:  # a log gets one line per round as it finishes
        assert output.count("[audit] round ") == 3


def test_console_sink_moves_an_attack_bar_while_a_round_is_attacked(
        sample_run: tuple[PrivacyReport, Path]) -> None:
    report, _ = sample_run
    console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=True)
    sink = ConsoleSink(console, total_rounds=3)
    sink.start(report.model_copy(update={"rounds": []}))
    fanout = SinkFanout([sink, LogSink(lambda line: None)])  # a sink without the hook is skipped
    fanout.attack_progress(1, 150, 600)
    sink._live.refresh()  # type: ignore[union-attr]
    during = console.file.getvalue()  # type: ignore[attr-defined]
    fanout.attack_progress(1, 600, 600)
    sink.close(report)

    assert "round 1: attack iterations" in during and "150/600" in during


def test_a_raising_progress_hook_does_not_reach_the_attack() -> None:
    class Broken:
        def attack_progress(self, server_round: int, done: int, total: int) -> None:
            raise OSError("terminal gone")

    SinkFanout([Broken()]).attack_progress(2, 1, 10)  # logged, not raised


def test_console_sink_prints_flower_warnings_through_its_console_and_restores_logging(
        sample_run: tuple[PrivacyReport, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report, _ = sample_run
    flwr_logger = logging.getLogger("flwr")
    before = list(flwr_logger.handlers)
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)  # as a caller quietening Flower might have left it
    console = Console(file=io.StringIO(), width=120, color_system=None)
    sink = ConsoleSink(console)
    sink.start(report)
    flwr_logger.warning("client 7 is slow")
    flwr_logger.info("an INFO line that would bury the table")
    sink.close(report)
    output = console.file.getvalue()  # type: ignore[attr-defined]

    assert "client 7 is slow" in output
    assert "would bury the table" not in output
    assert "client 7 is slow" not in capsys.readouterr().err
    assert flwr_logger.handlers == before
    assert flwr_logger.level == logging.ERROR
    flwr_logger.setLevel(level)


def test_run_folder_holds_every_file_and_the_html_embeds_every_image_and_plot(
        sample_run: tuple[PrivacyReport, Path]) -> None:
    report, run_dir = sample_run
    files = render_run(read_jsonl(run_dir / "report.jsonl"), run_dir)

    html = files.html.read_text(encoding="utf-8")
    images = _image_files(report, run_dir)
    assert len(images) == 16  # 2 + 1 + 2 + 2 + 1 pairs, two images each
    for image in images:
        assert data_uri(image) in html, image
    assert files.plots == [run_dir / "plots" / "rounds.png"]
    assert data_uri(files.plots[0]) in html
    # Self-contained: every src is inline, nothing points at another file.
    sources = re.findall(r"src='([^']*)'", html)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "attack diverged (NaN loss)" in html
    assert "proxy" in html

    assert PrivacyReport.model_validate_json(files.report_json.read_text()) == report
    with files.rounds_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["failed_clients"] == "1" and rows[1]["mean_lpips"] == ""
    assert files.grids == [grid_path(run_dir, r.round, c.node_id)
                           for r in report.rounds for c in r.clients if c.status == "ok"]
    assert all(grid.read_bytes().startswith(b"\x89PNG") for grid in files.grids)
    assert files.svg is not None and files.svg.read_text().lstrip().startswith("<svg")
    assert "inverting-gradients" in files.svg.read_text()


def test_grey_images_render_in_grids_and_html(tmp_path: Path) -> None:
    report = make_run(tmp_path, rounds=1, channels=1)
    files = render_run(report, tmp_path, svg=False)
    assert len(files.grids) == 2 and files.svg is None
    assert data_uri(tmp_path / "images/round-1/client-11/original-0.png") in files.html.read_text()


def test_missing_images_are_marked_not_saved_instead_of_failing(
        sample_run: tuple[PrivacyReport, Path]) -> None:
    report, run_dir = sample_run
    (run_dir / "images" / "round-1" / "client-11" / "reconstruction-0.png").unlink()
    files = render_run(report, run_dir, svg=False)
    assert "not saved" in files.html.read_text()
    assert grid_path(run_dir, 1, 11) in files.grids  # the other pair of that client still has a grid


def test_report_without_rounds_renders_without_plots(tmp_path: Path) -> None:
    report = PrivacyReport(run_id="empty")
    files = render_run(report, tmp_path)
    assert files.plots == [] and files.grids == []
    assert "Privacy audit, run empty" in files.html.read_text()
    assert "n/a (no audited round has a score)" in _text_panel(report)


def _text_panel(report: PrivacyReport) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    render_report(report, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_run_folder_sink_keeps_rounds_csv_current(
        sample_run: tuple[PrivacyReport, Path], tmp_path: Path) -> None:
    report, _ = sample_run
    sink = RunFolderSink(tmp_path / "live", svg=False)
    sink.start(report.model_copy(update={"rounds": []}))
    sink.write_round(report.rounds[0])
    lines = (tmp_path / "live" / "rounds.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("1,")
    sink.close(report)
    assert sink.files is not None and json.loads(sink.files.report_json.read_text())["run_id"] == "sample"


def test_new_run_dir_is_named_by_time_and_never_reused(tmp_path: Path) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5)
    first, second = new_run_dir(tmp_path, when), new_run_dir(tmp_path, when)
    assert first.name == "run-20260102-030405" and second.name == "run-20260102-030405-2"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out: .* is not a folder"):
        new_run_dir(tmp_path / "file")


def test_round_without_audit_shows_not_audited() -> None:
    report = PrivacyReport(rounds=[RoundRecord(round=1, accuracy=0.5, loss=1.0).summarise()])
    text = _text(rounds_table(report))
    assert "not audited" in text and "50.0%" in text


def test_image_paths_outside_the_run_folder_are_never_read(sample_run: tuple[PrivacyReport, Path],
                                                           tmp_path: Path) -> None:
    report, run_dir = sample_run
    secret = tmp_path / "secret.png"
    secret.write_bytes((run_dir / "images/round-1/client-11/original-0.png").read_bytes())
    score = report.rounds[0].clients[0].scores[0]
    score.original_image = "../secret.png"
    score.reconstruction_image = str(secret)  # absolute
    files = render_run(report, run_dir, svg=False)
    html = files.html.read_text()
    assert data_uri(secret) not in html
    assert html.count("not saved") == 2


def test_every_view_shows_the_leakage_interval_the_borderline_count_and_the_calibration(
        sample_run: tuple[PrivacyReport, Path]) -> None:
    report, run_dir = sample_run
    files = render_run(report, run_dir)
    for record in report.rounds:
        assert record.leakage_low is not None and record.leakage_high is not None
        assert record.leakage_low <= record.leakage_rate <= record.leakage_high
        assert record.borderline == sum(bool(s.borderline) for c in record.clients for s in c.scores)
    first = max(report.rounds, key=lambda r: r.borderline or 0)
    assert first.borderline
    interval = f"{100 * first.leakage_low:.0f}-{100 * first.leakage_high:.0f}"

    console = _text(rounds_table(report), width=160)
    row = next(line for line in console.splitlines() if line.strip().startswith(f"{first.round} "))
    assert f"({interval})" in row and f" {first.borderline} " in row
    panel = io.StringIO()
    render_report(report, Console(file=panel, width=160, color_system=None))
    for text in (panel.getvalue(), files.html.read_text()):
        assert "calibrated on 123 validation identities" in text and "balanced accuracy 0.88" in text
        assert "borderline band 0.700-0.950" in text

    html = files.html.read_text()
    assert f"{interval}" in html and "(borderline)" in html

    saved = json.loads(files.report_json.read_text())["rounds"][first.round - 1]
    assert (saved["leakage_low"], saved["leakage_high"], saved["borderline"]) == (
        first.leakage_low, first.leakage_high, first.borderline)
    assert saved["clients"][0]["scores"][0]["borderline"] is not None

    with files.rounds_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    row_of_round = rows[first.round - 1]
    assert float(row_of_round["leakage_low"]) == pytest.approx(first.leakage_low)
    assert float(row_of_round["leakage_high"]) == pytest.approx(first.leakage_high)
    assert int(row_of_round["borderline"]) == first.borderline

    lines: list[str] = []
    sink = LogSink(lines.append)
    sink.write_round(first)
    assert f"leakage_95ci=[{first.leakage_low:.2f}, {first.leakage_high:.2f}]" in lines[0]
    assert f"borderline={first.borderline}" in lines[0]


def test_notes_and_machinery_errors_reach_the_console_panel_and_the_html(
        sample_run: tuple[PrivacyReport, Path]) -> None:
    from semsim_audit.views.console import summary_panel
    from semsim_audit.views.html import render_html

    report, run_dir = sample_run
    report = report.model_copy(deep=True)
    report.rounds[0].errors.append("report sink Broken failed in round 1: OSError: disk full")
    report.errors.append("report sink Broken failed in close: OSError: disk full")
    report.rounds[0].clients[0].note = "audit-training observed: 3 local steps, declared 1"
    report.rounds[0].clients[0].scored_on = "client"
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(summary_panel(report))
    panel = console.file.getvalue()  # type: ignore[attr-defined]
    page = render_html(report, run_dir)

    assert "audit errors  2" in panel and "round 1: report sink Broken failed in round 1" in panel
    assert "notes         1" in panel and "3 local steps, declared 1" in panel
    assert "Audit errors (the run went on)" in page and "failed in close: OSError: disk full" in page
    assert "3 local steps, declared 1" in page and "scored on the client" in page
