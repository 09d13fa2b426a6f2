"""`semsim-audit semsim train | eval | show | download` end to end on a tiny folder."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from semsim_audit.cli.main import app

runner = CliRunner()


@pytest.mark.slow
def test_train_then_eval_writes_checkpoint_table_and_json(annotation_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.safetensors"
    trained = runner.invoke(app, ["semsim", "train", "--data", str(annotation_folder), "--out", str(out),
                                  "--epochs", "1", "--width", "4", "--batch", "8", "--device", "cpu",
                                  "--annotator", "proxy", "--val-fraction", "0.25", "--init", "scratch"])
    assert trained.exit_code == 0, trained.output
    assert out.is_file() and "threshold" in trained.output

    report = tmp_path / "eval.json"
    evaluated = runner.invoke(app, ["semsim", "eval", "--data", str(annotation_folder),
                                    "--checkpoint", str(out), "--json", str(report), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads(report.read_text())
    assert results["pairs"] == 48 and results["recognizable"] == 24
    assert set(results["per_image"]) >= {"semsim", "psnr", "ssim"}
    assert 0.0 <= results["per_image"]["semsim"]["auc"] <= 1.0
    assert results["checkpoint"]["annotator"] == "proxy"
    for name in ("semsim", "psnr", "ssim"):
        assert name in evaluated.output

    shown = runner.invoke(app, ["semsim", "show", str(out)])
    assert shown.exit_code == 0 and "proxy" in shown.output


@pytest.mark.slow
def test_eval_reports_per_configuration_correlations(annotation_folder: Path, tmp_path: Path,
                                                     random_checkpoint: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(annotation_folder, data)
    rows = ["path,configuration"]
    for number, folder in enumerate(sorted((data / "train_with_ori").iterdir())):
        for image in sorted(folder.iterdir()):
            if not image.stem.endswith("_ori"):
                rows.append(f"{image.relative_to(data)},config-{number % 4}")
    (data / "configurations.csv").write_text("\n".join(rows) + "\n")
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["semsim", "eval", "--data", str(data), "--checkpoint",
                                 str(random_checkpoint), "--json", str(report), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    per_configuration = json.loads(report.read_text())["per_configuration"]
    assert len(per_configuration["configurations"]) == 4
    assert set(per_configuration["correlation"]["semsim"]) == {"spearman", "pearson", "kendall"}
    assert "Spearman" in result.output


def test_bad_data_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["semsim", "train", "--data", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "train_with_ori" in result.output


def test_broken_checkpoint_exits_2(annotation_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 4)
    result = runner.invoke(app, ["semsim", "eval", "--data", str(annotation_folder),
                                 "--checkpoint", str(broken)])
    assert result.exit_code == 2 and "truncated" in result.output


def test_download_offline_fails_at_once_and_leaves_nothing(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    target = tmp_path / "semsim-data"
    result = runner.invoke(app, ["semsim", "download", "--to", str(target)])
    assert result.exit_code == 2
    assert "cannot reach drive.google.com" in result.output
    assert not target.exists()
