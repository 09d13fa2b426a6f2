"""Training on the released layout: loss goes down, the checkpoint loads, runs resume exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import semsim_audit.semsim.train as training
from semsim_audit import SemSim
from semsim_audit.semsim.annotations import read_annotations, split_identities
from semsim_audit.semsim.checkpoint import load_checkpoint
from semsim_audit.semsim.model import SemSimNet
from semsim_audit.semsim.train import ImagePool, TrainConfig, resume_path, train

TINY = {"epochs": 8, "width": 4, "batch_size": 6, "lr": 0.05, "val_fraction": 0.25, "seed": 5,
        "device": "cpu", "annotator": "proxy", "init": "scratch", "keep": "last", "patience": 0}


def _clean_triplet_loss(model: nn.Module, pool: ImagePool) -> float:
    rows = [(o, p, n) for o, positives, negatives in pool.identities for p in positives for n in negatives]
    triplets = np.asarray(rows)
    model.eval()
    with torch.no_grad():
        anchor, positive, negative = (model(pool.images(triplets[:, k])) for k in range(3))
    return float(nn.TripletMarginLoss(margin=1.0)(anchor, positive, negative))


@pytest.mark.slow
def test_training_lowers_the_triplet_loss_and_writes_a_loadable_checkpoint(
        annotation_folder: Path, tmp_path: Path) -> None:
    config = TrainConfig(**TINY)
    torch.manual_seed(config.seed)  # the same initial weights train() starts from
    before = _clean_triplet_loss(SemSimNet(width=4), ImagePool(read_annotations(annotation_folder)))
    out = tmp_path / "tiny.safetensors"
    result = train(annotation_folder, out, config, progress=False)
    after = _clean_triplet_loss(load_checkpoint(out)[0], ImagePool(read_annotations(annotation_folder)))
    assert after < 0.8 * before
    sem = SemSim.load(out, device="cpu")
    assert sem.info["annotator"] == "proxy" and sem.info["width"] == 4
    assert 0 < sem.threshold < 2
    assert [row["epoch"] for row in result.history] == list(range(1, 9))
    assert result.metadata.training["identities"] == {"train": 9, "validation": 3}
    assert not resume_path(out).exists()


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(annotation_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(**{**TINY, "epochs": 2})
    straight = train(annotation_folder, tmp_path / "straight.safetensors", config, progress=False)

    real_save = training._save_resume

    def save_then_die(path: Path, *args: object, **kwargs: object) -> None:
        real_save(path, *args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # killed right after the first epoch's state hit the disk

    out = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(training, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(annotation_folder, out, config, progress=False)
    assert resume_path(out).is_file() and not out.exists()
    monkeypatch.setattr(training, "_save_resume", real_save)
    resumed = train(annotation_folder, out, config, progress=False)
    assert resumed.history == straight.history
    assert resumed.metadata.sha256 == straight.metadata.sha256


def test_resume_state_from_other_settings_is_refused(annotation_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    model = SemSimNet(width=4)
    training._save_resume(resume_path(out), model, torch.optim.SGD(model.parameters(), lr=0.1), 1,
                          "made by another run", [])
    with pytest.raises(ValueError, match="other settings"):
        train(annotation_folder, out, TrainConfig(**{**TINY, "epochs": 1}), progress=False)


def test_identity_split_keeps_each_original_on_one_side(annotation_folder: Path) -> None:
    identities = read_annotations(annotation_folder).identities
    train_ids, val_ids = split_identities(identities, 0.25, seed=1)
    assert len(val_ids) == 3 and len(train_ids) == 9
    assert not {i.name for i in train_ids} & {i.name for i in val_ids}
    assert split_identities(identities, 0.25, seed=1)[1] == val_ids


def test_layout_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_with_ori"):
        read_annotations(tmp_path)
    (tmp_path / "train_with_ori" / "7").mkdir(parents=True)
    with pytest.raises(ValueError, match="_ori"):
        read_annotations(tmp_path)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
