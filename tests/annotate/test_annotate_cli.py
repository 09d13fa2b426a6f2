"""`semsim-audit annotate ...`: the short and long serve forms, export, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from semsim_audit.annotate import app as annotate_app_module
from semsim_audit.annotate.store import LabelStore
from semsim_audit.cli.main import app

runner = CliRunner()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the blocking uvicorn call by a recorder of what would be served."""
    calls: list[dict[str, Any]] = []
    def record(items: Any, store: Any, port: int, shuffle: bool) -> None:
        calls.append({"items": items, "store": store, "port": port, "shuffle": shuffle})

    monkeypatch.setattr(annotate_app_module, "serve", record)
    return calls


def test_the_short_form_serves_the_source(served: list, run_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["annotate", str(run_folder), "--out", str(out), "--annotator", "ann-1",
                                 "--port", "8799"])
    assert result.exit_code == 0, result.output
    assert "6 pairs" in result.output and "http://127.0.0.1:8799/" in result.output
    (call,) = served
    assert call["port"] == 8799 and call["store"].annotator == "ann-1" and len(call["items"]) == 6
    assert call["shuffle"] is False
    assert call["store"].path == out / "labels.jsonl"
    assert json.loads((out / "session.json").read_text())["source"] == str(run_folder.resolve())


def test_options_may_come_first_and_serve_may_be_named(served: list, pair_folder: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert runner.invoke(app, ["annotate", "--out", str(out), str(pair_folder)]).exit_code == 0
    LabelStore(out / "labels.jsonl", "ann").answer("cat_rec", "skip")
    result = runner.invoke(app, ["annotate", "serve", str(pair_folder), "--out", str(out),
                                 "--annotator", "ann", "--shuffle"])
    assert result.exit_code == 0, result.output
    assert "1 already answered" in " ".join(result.output.split())  # the console wraps long paths
    assert [(c["items"].kind, c["shuffle"]) for c in served] == [("pairs", False), ("pairs", True)]


def test_help_lists_both_commands() -> None:
    result = runner.invoke(app, ["annotate", "--help"])
    assert result.exit_code == 0 and "serve" in result.output and "export" in result.output


def _fails(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_bad_serve_inputs_are_one_line_errors(served: list, run_folder: Path, pair_folder: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fails(["annotate", str(tmp_path / "missing"), "--out", str(out)], "is not a folder")
    _fails(["annotate", str(run_folder), "--out", str(out), "--annotator", "../x"], "--annotator '../x'")
    assert runner.invoke(app, ["annotate", str(run_folder), "--out", str(out)]).exit_code == 0
    _fails(["annotate", str(pair_folder), "--out", str(out)], "use another --out")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _fails(["annotate", str(run_folder), "--out", str(out), "--port", str(port)], f"--port {port}")
    assert len(served) == 1


def test_export_command(run_folder: Path, tmp_path: Path, served: list) -> None:
    out = tmp_path / "out"
    _fails(["annotate", "export", str(out)], "not an annotation folder")
    runner.invoke(app, ["annotate", str(run_folder), "--out", str(out)])
    _fails(["annotate", "export", str(out)], "no answers")
    LabelStore(out / "labels.jsonl", "a").answer("round-1.client-7.reconstruction-0", "recognizable")
    elsewhere = tmp_path / "bob.jsonl"
    LabelStore(elsewhere, "b").answer("round-1.client-7.reconstruction-0", "recognizable")
    LabelStore(elsewhere, "b").answer("round-1.client-7.reconstruction-1", "not_recognizable")

    result = runner.invoke(app, ["annotate", "export", str(out), "--labels", str(elsewhere)])
    assert result.exit_code == 0, result.output
    assert "Fleiss' kappa" in result.output and "agreement.json" in result.output
    summary = json.loads((out / "export" / "agreement.json").read_text())
    assert summary["annotators"] == ["a", "b"]
    assert summary["counts"]["recognizable"] == 1 and summary["counts"]["not_recognizable"] == 1

    _fails(["annotate", "export", str(out)], "--force")
    _fails(["annotate", "export", str(out), "--min-votes", "2", "--force"], "no item has a majority")
    strict = runner.invoke(app, ["annotate", "export", str(out), "--min-votes", "2", "--force",
                                 "--labels", str(elsewhere)])
    assert strict.exit_code == 0, strict.output
    assert json.loads((out / "export" / "agreement.json").read_text())["counts"]["unlabeled"] == 5
    _fails(["annotate", "export", str(out), "--labels", str(tmp_path / "nope.jsonl")], "--labels")
