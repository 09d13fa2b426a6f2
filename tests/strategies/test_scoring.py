"""Scoring: reconstructions are matched to originals, then every pair is scored (and saved when asked)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from semsim_audit.scoring import (
    judge_checkpoint,
    label_accuracy,
    load_judge,
    pair_image_paths,
    score_client,
    score_reconstructions,
)


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_label_accuracy_is_order_free() -> None:
    assert label_accuracy(torch.tensor([1, 2, 2]), torch.tensor([2, 1, 2])) == 1.0
    assert label_accuracy(torch.tensor([1, 2, 2]), torch.tensor([2, 2, 2])) == 2 / 3
    assert label_accuracy(torch.tensor([1]), torch.tensor([], dtype=torch.long)) is None


def test_shuffled_perfect_reconstructions_are_matched_back(small_semsim) -> None:
    originals = _images()
    order = torch.tensor([2, 0, 1])
    scores = score_reconstructions(originals[order], originals, true_labels=torch.tensor([4, 5, 6]),
                                   recovered_labels=torch.tensor([6, 4, 5]), semsim=small_semsim)
    assert [s.original_index for s in scores] == [0, 1, 2]
    for score in scores:
        assert score.semsim is not None and score.semsim < 1e-3
        assert score.recognizable and score.identified
        assert score.psnr is None  # infinite PSNR of an exact copy is not JSON: stored as None
        assert score.ssim is not None and score.ssim > 0.99
        assert score.true_label == score.recovered_label


def test_noise_reconstructions_score_worse_than_copies(small_semsim) -> None:
    originals = _images()
    copies = score_reconstructions(originals + 0.01, originals, true_labels=None, recovered_labels=None,
                                   semsim=small_semsim)
    noise = score_reconstructions(_images(seed=9), originals, true_labels=None, recovered_labels=None,
                                  semsim=small_semsim)
    assert min(s.psnr for s in copies) > max(s.psnr for s in noise)
    assert min(s.ssim for s in copies) > max(s.ssim for s in noise)


def test_fewer_reconstructions_than_originals_pair_what_exists(small_semsim) -> None:
    originals = _images(4)
    scores = score_reconstructions(originals[[3]], originals, true_labels=None, recovered_labels=None,
                                   semsim=small_semsim)
    assert len(scores) == 1 and scores[0].original_index == 3


def test_images_are_saved_in_the_run_folder_layout(small_semsim, tmp_path: Path) -> None:
    originals = _images(2)
    scores = score_reconstructions(originals.flip(0), originals, true_labels=None, recovered_labels=None,
                                   semsim=small_semsim, run_dir=tmp_path, server_round=3, node_id=42)
    for k, score in enumerate(scores):
        assert (score.original_image, score.reconstruction_image) == pair_image_paths(3, 42, k)
        assert score.original_image == f"images/round-3/client-42/original-{k}.png"
        with Image.open(tmp_path / score.reconstruction_image) as image:
            assert image.size == (32, 32)


def _result(images: torch.Tensor, status: str = "ok", reason: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(images=images, labels=torch.zeros(images.shape[0], dtype=torch.long), loss=0.5,
                           seconds=1.5, status=status, reason=reason)


def test_failed_attack_keeps_its_reason(small_semsim) -> None:
    audit = score_client(node_id=1, attack="idlg", result=_result(torch.empty(0), "failed", "diverged"),
                         originals=_images(1), true_labels=torch.tensor([0]), semsim=small_semsim,
                         server_round=1)
    assert (audit.status, audit.reason, audit.scores) == ("failed", "diverged", [])


def test_nan_reconstruction_is_a_failed_audit(small_semsim) -> None:
    images = torch.full((1, 3, 32, 32), float("nan"))
    audit = score_client(node_id=1, attack="idlg", result=_result(images), originals=_images(1),
                         true_labels=torch.tensor([0]), semsim=small_semsim, server_round=1)
    assert audit.status == "failed" and "not finite" in audit.reason


def test_ok_audit_has_scores_and_label_accuracy(small_semsim) -> None:
    originals = _images(2)
    audit = score_client(node_id=5, attack="idlg", result=_result(originals), originals=originals,
                         true_labels=torch.tensor([0, 1]), semsim=small_semsim, server_round=1,
                         local_steps=1, batch_size=2)
    assert audit.status == "ok" and len(audit.scores) == 2
    assert audit.label_accuracy == 0.5 and audit.attack_loss == 0.5 and audit.batch_size == 2


def test_pairs_name_the_reconstruction_they_matched(small_semsim) -> None:
    originals = _images()
    scores = score_reconstructions(originals[[1, 2, 0]], originals, true_labels=None, recovered_labels=None,
                                   semsim=small_semsim)
    assert [(s.original_index, s.reconstruction_index) for s in scores] == [(0, 2), (1, 0), (2, 1)]


def test_the_judge_travels_and_judges_the_same(small_semsim) -> None:
    sha256, checkpoint = judge_checkpoint(small_semsim)
    assert checkpoint is not None  # not the shipped checkpoint: it must travel
    judge = load_judge(sha256, checkpoint, device="cpu")
    originals, reconstructions = _images(2), _images(2, seed=4)
    assert judge.threshold == small_semsim.threshold
    assert torch.allclose(judge.distance(originals, reconstructions),
                          small_semsim.distance(originals, reconstructions), atol=1e-5)
    with pytest.raises(ValueError, match="sha256"):
        load_judge("0" * 64, checkpoint)


def test_the_shipped_judge_does_not_travel() -> None:
    from semsim_audit.semsim import SemSim

    sha256, checkpoint = judge_checkpoint(SemSim.load(device="cpu"))
    assert checkpoint is None and load_judge(sha256, None, device="cpu").metadata.sha256 == sha256
    with pytest.raises(ValueError, match="not sent"):
        load_judge("f" * 64, None)
