"""Results out of a real audited run: scores.csv, DataFrames, TensorBoard event files, notebook HTML."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas
import pytest
from PIL import Image
from real_run import run_audited
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from semsim_audit.bench import CellResult
from semsim_audit.report import PrivacyReport, ReconstructionRow, RoundRow, read_jsonl
from semsim_audit.views.files import SCORES_CSV_COLUMNS
from semsim_audit.views.html import data_uri
from semsim_audit.views.tensorboard import IMAGE_TAG, SCALARS, TensorBoardSink


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[PrivacyReport, Path, Path]:
    """(report, run folder, TensorBoard folder) of a 2-round run; the sink finds the images itself."""
    run_dir, board = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("tensorboard")
    report = run_audited(run_dir, sinks=[TensorBoardSink(board)])
    assert [r.status for r in report.rounds] == ["ok", "ok"], [r.clients for r in report.rounds]
    return report, run_dir, board


def _scores(report: PrivacyReport) -> list:
    return [(record, audit, score) for record in report.rounds for audit in record.clients
            for score in audit.scores]


def _cell(value: object) -> str:
    return "" if value is None else str(value)


# ------------------------------------------------------------------ scores.csv and DataFrames


def test_scores_csv_has_one_row_per_reconstruction_with_its_scores(run) -> None:
    report, run_dir, _ = run
    with (run_dir / "scores.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header, rows = next(reader), list(reader)
    assert tuple(header) == SCORES_CSV_COLUMNS == ReconstructionRow._fields
    expected = _scores(report)
    assert len(rows) == len(expected) == 8  # 2 rounds x 2 clients x 2 images
    for row, (record, audit, score) in zip(rows, expected, strict=True):
        cells = dict(zip(header, row, strict=True))
        assert cells["round"] == str(record.round) and cells["client"] == str(audit.node_id)
        assert cells["image_index"] == str(score.original_index) and cells["attack"] == "inverting-gradients"
        for name in ("semsim", "psnr", "ssim"):
            assert float(cells[name]) == getattr(score, name)  # written at full precision
        for name in ("recognizable", "borderline", "identified", "true_label", "recovered_label", "lpips"):
            assert cells[name] == _cell(getattr(score, name)), name
        assert (run_dir / cells["original_image"]).is_file()
        assert (run_dir / cells["reconstruction_image"]).is_file()
    assert not list(run_dir.glob("*.tmp"))  # written beside and renamed: nothing half-written is left


def test_dataframes_have_a_row_per_reconstruction_client_audit_and_round(run) -> None:
    report, run_dir, _ = run
    scores = report.to_dataframe()
    assert len(scores) == 8 and tuple(scores.columns) == SCORES_CSV_COLUMNS
    assert scores["semsim"].tolist() == [score.semsim for _, _, score in _scores(report)]
    assert scores["recognizable"].tolist() == [score.recognizable for _, _, score in _scores(report)]
    from_csv = pandas.read_csv(run_dir / "scores.csv")
    assert from_csv["semsim"].tolist() == scores["semsim"].tolist()
    assert from_csv["original_image"].tolist() == scores["original_image"].tolist()

    clients = report.to_dataframe("client")
    audits = [(record.round, audit) for record in report.rounds for audit in record.clients]
    assert len(clients) == len(audits) == 4
    assert clients["client"].tolist() == [audit.node_id for _, audit in audits]
    assert clients["reconstructions"].tolist() == [2, 2, 2, 2]
    assert clients["leakage_rate"].tolist() == pytest.approx([audit.leakage_rate for _, audit in audits])

    rounds = report.to_dataframe("round")
    assert len(rounds) == 2 and tuple(rounds.columns) == RoundRow._fields
    assert rounds["accuracy"].tolist() == [record.accuracy for record in report.rounds]
    assert rounds["leakage_high"].tolist() == [record.leakage_high for record in report.rounds]
    assert pandas.read_csv(run_dir / "rounds.csv")["accuracy"].tolist() == rounds["accuracy"].tolist()

    reread = read_jsonl(run_dir / "report.jsonl")
    for level in ("reconstruction", "client", "round"):
        assert reread.to_dataframe(level).equals(report.to_dataframe(level)), level


def test_an_unknown_level_is_refused_naming_the_levels(run) -> None:
    report, _, _ = run
    with pytest.raises(ValueError, match="level must be one of 'reconstruction', 'client', 'round'; "
                                         "got 'image'"):
        report.to_dataframe("image")  # type: ignore[arg-type]


def test_without_pandas_to_dataframe_names_the_extra(run, monkeypatch: pytest.MonkeyPatch) -> None:
    report, _, _ = run
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r'pip install "semsim-audit\[pandas\]"'):
        report.to_dataframe()


# ------------------------------------------------------------------ TensorBoard


def test_tensorboard_has_every_rounds_numbers_and_reconstruction_grids(run) -> None:
    report, _, board = run
    events = EventAccumulator(str(board), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("utility/accuracy", "utility/loss", "leakage/rate", "leakage/rate_low", "leakage/rate_high",
                "leakage/borderline", "similarity/mean_semsim", "similarity/mean_psnr",
                "similarity/mean_ssim", "audit/attack_seconds"):
        assert tag in tags["scalars"], tag
        logged = events.Scalars(tag)
        assert [event.step for event in logged] == [1, 2]
        expected = [getattr(record, SCALARS[tag]) for record in report.rounds]
        assert [event.value for event in logged] == pytest.approx(expected, rel=1e-6), tag
    assert "similarity/mean_lpips" not in tags["scalars"]  # unknown without LPIPS weights: not logged as 0
    for audit in report.rounds[0].clients:
        images = events.Images(IMAGE_TAG.format(node_id=audit.node_id))
        assert [image.step for image in images] == [1, 2]
        picture = Image.open(io.BytesIO(images[0].encoded_image_string))
        assert picture.size == (images[0].width, images[0].height) and min(picture.size) > 100


def test_without_tensorboard_the_sink_names_the_extra(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'pip install "semsim-audit\[tensorboard\]"'):
        TensorBoardSink(tmp_path)


# ------------------------------------------------------------------ notebooks


def test_report_in_a_notebook_shows_the_table_the_plot_and_saved_pairs(run) -> None:
    report, run_dir, _ = run
    for shown in (report, read_jsonl(run_dir / "report.jsonl")):
        html = shown._repr_html_()
        assert html.startswith("<div class='semsim-audit'>") and "<html" not in html and "<body" not in html
        table = html[html.index("<table class='rounds'>"):]
        table = table[:table.index("</table>")]
        assert table.count("<tr>") == 1 + len(report.rounds)  # the header and one row per round
        assert html.count("src='data:image/png;base64,") >= 3  # the plot and at least one pair
        worst = report.worst_round()
        assert worst is not None
        score = worst.clients[0].scores[0]
        assert data_uri(run_dir / score.original_image) in html
        assert data_uri(run_dir / score.reconstruction_image) in html
        # The page's style, scoped: a notebook's own body and tables are left alone.
        assert ".semsim-audit {" in html and ".semsim-audit table {" in html and "\nbody {" not in html


def test_report_without_its_run_folder_shows_no_pairs(run) -> None:
    report, _, _ = run
    detached = PrivacyReport.model_validate({**report.model_dump(), "config": {}})
    assert detached.run_dir is None
    html = detached._repr_html_()
    assert "<table class='rounds'>" in html and "src='data:image/png;base64," in html  # table and plot
    assert "class='pairs'" not in html


def test_bench_cell_in_a_notebook_shows_the_sweep_table_and_plot() -> None:
    cell = CellResult("noise", 0.01, 0, "ok", accuracy=0.62, leakage_rate=0.25, mean_semsim=0.7,
                      mean_psnr=12.0, mean_ssim=0.2, reconstructions=8, rounds=2)
    html = cell._repr_html_()
    assert html.startswith("<div class='semsim-audit'>") and "<html" not in html
    assert "<td class=text>noise 0.01</td><td>1</td><td>0.62</td><td>0.25</td>" in html
    assert "src='data:image/png;base64," in html


def test_notebook_and_tensorboard_views_leave_matplotlibs_global_state_alone(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from sample_run import make_run; from semsim_audit.views.tensorboard import TensorBoardSink;"
        "run = Path(sys.argv[2]); report = make_run(run); report._repr_html_();"
        "sink = TensorBoardSink(run / 'tb', run_dir=run); sink.start(report);"
        "[sink.write_round(r) for r in report.rounds]; sink.close(report);"
        "import matplotlib; print('matplotlib.pyplot' in sys.modules, matplotlib.rcParams['backend'])"
    )
    env = {**os.environ, "MPLBACKEND": "svg", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "run")],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "svg"], out  # no pyplot, and the user's backend is untouched
