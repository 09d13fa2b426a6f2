"""`semsim-audit semsim train | eval | show | download` end to end on a tiny folder."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
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


def test_unreadable_checkpoint_exits_1_and_a_missing_one_2(annotation_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 4)
    for command in (["eval", "--data", str(annotation_folder), "--checkpoint"], ["show"]):
        result = runner.invoke(app, ["semsim", *command, str(broken)])
        assert result.exit_code == 1 and "truncated" in result.output, result.output
        result = runner.invoke(app, ["semsim", *command, str(tmp_path / "missing.safetensors")])
        assert result.exit_code == 2 and "no checkpoint file" in result.output, result.output


def test_download_offline_fails_at_once_and_leaves_nothing(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    target = tmp_path / "semsim-data"
    result = runner.invoke(app, ["semsim", "download", "--to", str(target)])
    assert result.exit_code == 1
    assert "cannot reach drive.google.com" in result.output
    assert not target.exists()


def _labelled_run(root: Path) -> tuple[Path, Path]:
    """A run folder (3 rounds x 2 reconstructions) and the answers of two annotators about it.

    Round 1's reconstructions are near copies (both say recognizable), later rounds' are noise (both
    say not), and one round-3 item gets a split vote (a tie: left out).
    """
    from semsim_audit.annotate import LabelStore
    from semsim_audit.annotate.store import claim_out_dir
    from semsim_audit.core import save_png
    from semsim_audit.report import ClientAudit, JsonlSink, PrivacyReport, ReconstructionScore, RoundRecord

    run = root / "run"
    generator = torch.Generator().manual_seed(0)
    originals = torch.rand(2, 3, 32, 32, generator=generator)
    report = PrivacyReport(run_id="labelled", attack="inverting-gradients")
    journal = JsonlSink(run / "report.jsonl")
    journal.start(report)
    for round_number in (1, 2, 3):
        scores = []
        for index, original in enumerate(originals):
            folder = f"images/round-{round_number}/client-5"
            near = (original + 0.02 * torch.randn(original.shape, generator=generator)).clamp(0, 1)
            save_png(original, run / folder / f"original-{index}.png")
            save_png(near if round_number == 1 else torch.rand(original.shape, generator=generator),
                     run / folder / f"reconstruction-{index}.png")
            scores.append(ReconstructionScore(
                original_index=index, original_image=f"{folder}/original-{index}.png",
                reconstruction_image=f"{folder}/reconstruction-{index}.png"))
        record = RoundRecord(round=round_number, clients=[
            ClientAudit(node_id=5, attack="inverting-gradients", status="ok", num_images=2, scores=scores)])
        journal.write_round(record.summarise())
    labels = claim_out_dir(root / "labels", run, "run", 6)
    for annotator in ("alice", "bob"):
        store = LabelStore(labels, annotator)
        for round_number in (1, 2, 3):
            for index in (0, 1):
                answer = "recognizable" if round_number == 1 else "not_recognizable"
                if (round_number, index, annotator) == (3, 1, "bob"):
                    answer = "recognizable"
                store.answer(f"round-{round_number}.client-5.reconstruction-{index}", answer)
    return run, root / "labels"


def test_eval_checks_the_judge_on_a_run_folder_labelled_with_annotate(tmp_path: Path,
                                                                      random_checkpoint: Path) -> None:
    run, labels = _labelled_run(tmp_path)
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["semsim", "eval", "--data", str(labels), "--checkpoint",
                                 str(random_checkpoint), "--json", str(report), "--device", "cpu",
                                 "--no-lpips"])
    assert result.exit_code == 0, result.output
    results = json.loads(report.read_text())
    assert (results["pairs"], results["recognizable"]) == (5, 2)  # the tie is left out
    assert str(run.resolve()) in results["data"]
    assert "semsim" in result.output and "borderline pairs" in result.output

    again = runner.invoke(app, ["semsim", "eval", "--data", str(run), "--labels",
                                str(labels / "labels.jsonl"), "--checkpoint", str(random_checkpoint),
                                "--json", str(report), "--device", "cpu", "--no-lpips"])
    assert again.exit_code == 0, again.output
    assert json.loads(report.read_text())["per_image"] == results["per_image"]


def test_eval_of_answers_without_a_majority_exits_2(tmp_path: Path, random_checkpoint: Path) -> None:
    run, labels = _labelled_run(tmp_path)
    result = runner.invoke(app, ["semsim", "eval", "--data", str(labels), "--min-votes", "3",
                                 "--checkpoint", str(random_checkpoint)])
    assert result.exit_code == 2 and "no item has a majority answer" in result.output
