"""How sure a verdict is: the checkpoint's calibration record and borderline band, in scores and reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semsim_audit.report import ClientAudit, RoundRecord
from semsim_audit.scoring import score_reconstructions
from semsim_audit.semsim import PROXY_V1_CHECKPOINT, SemSim
from semsim_audit.semsim.checkpoint import load_checkpoint, save_checkpoint
from semsim_audit.semsim.model import SemSimNet
from semsim_audit.semsim.train import TrainConfig, train

CALIBRATION = {"set": "40 validation identities", "identities": 40, "pairs": 400, "balanced_accuracy": 0.91}


def _judge(tmp_path: Path, band: tuple[float, float] | None) -> SemSim:
    torch.manual_seed(0)
    path = tmp_path / "judge.safetensors"
    save_checkpoint(path, SemSimNet(width=4), threshold=0.5, annotator="proxy", data="unit test",
                    calibration=CALIBRATION, borderline_band=band)
    return SemSim.load(path, device="cpu")


def test_calibration_and_band_round_trip_and_reach_the_report_header(tmp_path: Path) -> None:
    judge = _judge(tmp_path, (0.4, 0.65))
    _, metadata = load_checkpoint(judge.path)  # type: ignore[arg-type]
    assert metadata.borderline_band == (0.4, 0.65) and metadata.calibration == CALIBRATION
    assert judge.info["calibration"] == CALIBRATION and judge.info["borderline_band"] == [0.4, 0.65]
    flags = judge.borderline(torch.tensor([0.1, 0.4, 0.5, 0.65, 0.66, 1.5]))
    assert flags.tolist() == [False, True, True, True, False, False]


def test_a_band_that_does_not_hold_the_threshold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="borderline_band"):
        save_checkpoint(tmp_path / "bad.safetensors", SemSimNet(width=4), threshold=0.5, annotator="proxy",
                        data="unit test", borderline_band=(0.6, 0.8))


def test_the_previous_default_still_loads_without_a_band_and_says_how_it_was_calibrated() -> None:
    old = SemSim.load(PROXY_V1_CHECKPOINT, device="cpu")
    assert old.metadata.head == "none" and old.borderline_band is None
    assert old.borderline(torch.tensor([0.1, 0.9])) is None
    assert old.info["calibration"]["set"] == "validation identities"
    assert 0.5 < old.info["calibration"]["balanced_accuracy"] <= 1.0


def test_scores_flag_borderline_pairs_and_the_round_counts_them_with_a_wilson_interval(
        tmp_path: Path) -> None:
    judge = _judge(tmp_path, (0.0, 2.0))  # everything is borderline
    originals = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    scores = score_reconstructions(originals.flip(-1), originals, true_labels=None, recovered_labels=None,
                                   semsim=judge)
    assert [s.borderline for s in scores] == [True, True, True]
    record = RoundRecord(round=1, clients=[ClientAudit(node_id=1, attack="idlg", status="ok", scores=scores)])
    record.summarise()
    assert record.borderline == 3
    called = sum(bool(s.recognizable) for s in scores)
    assert record.leakage_rate == pytest.approx(called / 3)
    assert record.leakage_low < record.leakage_rate < record.leakage_high or called in (0, 3)
    assert 0.0 <= record.leakage_low <= record.leakage_high <= 1.0


def test_a_judge_without_a_band_leaves_borderline_unknown(tmp_path: Path) -> None:
    judge = _judge(tmp_path, None)
    originals = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    scores = score_reconstructions(originals, originals, true_labels=None, recovered_labels=None,
                                   semsim=judge)
    assert [s.borderline for s in scores] == [None, None]
    record = RoundRecord(round=1, clients=[ClientAudit(node_id=1, attack="idlg", status="ok", scores=scores)])
    assert record.summarise().borderline is None and record.leakage_high is not None


def test_training_records_the_calibration_set_and_a_band_around_the_threshold(annotation_folder: Path,
                                                                             tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, val_fraction=0.34, seed=0, device="cpu", annotator="proxy", width=4)
    metadata = train(annotation_folder, tmp_path / "head.safetensors", config, progress=False).metadata
    low, high = metadata.borderline_band  # type: ignore[misc]
    assert low <= metadata.threshold <= high
    calibration = metadata.calibration
    assert calibration["set"].startswith("4 validation identities") and calibration["identities"] == 4
    assert calibration["pairs"] == 16
    assert calibration["balanced_accuracy"] == metadata.training["balanced_accuracy"]
