"""Training on the released layout: loss goes down, the checkpoint loads, runs resume exactly.

Both recipes: the default (stats head on a frozen backbone, pair loss) and the released one (whole
ResNet, triplet loss).
"""

from __future__ import annotations

import re
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
        "device": "cpu", "annotator": "proxy", "init": "scratch", "keep": "last", "patience": 0,
        "head": "none", "trainable": "all", "loss": "triplet"}
# The default recipe, shortened; width 4 keeps the frozen backbone cheap.
HEAD = {"epochs": 15, "width": 4, "batch_size": 16, "lr": 3e-3, "val_fraction": 0.25, "seed": 5,
        "device": "cpu", "annotator": "proxy", "keep": "last", "patience": 0}


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
    # 16 epochs: on 9 tiny identities 8 were enough with one thread but not always with two.
    config = TrainConfig(**{**TINY, "epochs": 16})
    torch.manual_seed(config.seed)  # the same initial weights train() starts from
    before = _clean_triplet_loss(SemSimNet(width=4), ImagePool(read_annotations(annotation_folder)))
    out = tmp_path / "tiny.safetensors"
    result = train(annotation_folder, out, config, progress=False)
    after = _clean_triplet_loss(load_checkpoint(out)[0], ImagePool(read_annotations(annotation_folder)))
    assert after < 0.8 * before
    sem = SemSim.load(out, device="cpu")
    assert sem.info["annotator"] == "proxy" and sem.info["width"] == 4
    assert 0 < sem.threshold < 2
    assert [row["epoch"] for row in result.history] == list(range(1, 17))
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
    training._save_resume(resume_path(out), model, nn.TripletMarginLoss(),
                          torch.optim.SGD(model.parameters(), lr=0.1), 1, "made by another run", [])
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


def _pair_loss(model: SemSimNet, pool: ImagePool) -> float:
    """The default recipe's loss at its initial offset and scale, over every judged pair."""
    pairs, labels = training._validation_pairs(pool, range(len(pool.identities)))
    model.eval()
    with torch.no_grad():
        return float(training.PairLoss()(model(pool.images(pairs[:, 0])), model(pool.images(pairs[:, 1])),
                                         torch.as_tensor(labels)))


def test_default_training_fits_only_the_head_and_writes_a_stats_checkpoint(
        annotation_folder: Path, tmp_path: Path) -> None:
    config = TrainConfig(**HEAD)
    assert (config.head, config.trainable, config.loss, config.augment) == ("stats", "head", "pairs", "none")
    pool = ImagePool(read_annotations(annotation_folder))
    torch.manual_seed(config.seed)  # the initial weights train() starts from
    start = SemSimNet(width=4, head="stats")
    out = tmp_path / "head.safetensors"
    result = train(annotation_folder, out, config, progress=False)
    trained, metadata = load_checkpoint(out)
    assert (metadata.head, metadata.embedding_dim, metadata.width) == ("stats", 64, 4)
    before, after = start.state_dict(), trained.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # BatchNorm statistics included
    assert not torch.equal(before["head.0.weight"], after["head.0.weight"])
    assert not torch.equal(after["feature_mean"], torch.zeros_like(after["feature_mean"]))
    # The loss the head minimised went down; judged at the untrained head's standardisation too.
    start.feature_mean.copy_(after["feature_mean"])
    start.feature_std.copy_(after["feature_std"])
    assert _pair_loss(trained, pool) < 0.8 * _pair_loss(start, pool)
    # The validation AUC recorded from cached features is what the scorer's full forward pass gives.
    sem = SemSim.load(out, device="cpu")
    assert sem.info["width"] == 4 and 0 < sem.threshold < 2
    names = [ident.name for ident in read_annotations(annotation_folder).identities]
    _, validation = split_identities(read_annotations(annotation_folder).identities, 0.25, config.seed)
    pairs, labels = training._validation_pairs(pool, [names.index(i.name) for i in validation])
    distances = sem.distance(pool.images(pairs[:, 0]), pool.images(pairs[:, 1])).numpy()
    from semsim_audit.semsim.calibration import roc_auc

    assert roc_auc(-distances, labels) == pytest.approx(result.history[-1]["val_auc"], abs=1e-5)


def test_head_training_resumes_to_the_same_weights(annotation_folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(**{**HEAD, "epochs": 3})
    straight = train(annotation_folder, tmp_path / "straight.safetensors", config, progress=False)
    real_save = training._save_resume
    calls = []

    def save_then_die(path: Path, *args: object, **kwargs: object) -> None:
        real_save(path, *args, **kwargs)  # type: ignore[arg-type]
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the second epoch: Adam's moments must come back

    out = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(training, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(annotation_folder, out, config, progress=False)
    monkeypatch.setattr(training, "_save_resume", real_save)
    resumed = train(annotation_folder, out, config, progress=False)
    assert resumed.history == straight.history
    assert resumed.metadata.sha256 == straight.metadata.sha256


@pytest.mark.parametrize(("options", "message"), [
    ({"head": "none"}, "trainable='head' needs one of the stats heads (stats, stats-layout, stats-early)"),
    ({"freeze_epochs": 2}, "freeze_epochs=2 needs trainable='all'"),
    ({"augment": "strong"}, "augment='strong' needs trainable='all'"),
    ({"loss": "hinge"}, "loss must be one of pairs, triplet"),
    ({"trainable": "some"}, "trainable must be one of head, all"),
    ({"head": "mlp"}, "head must be one of none, stats"),
    ({"weight_decay": -1.0}, "weight_decay"),
])
def test_contradictory_recipe_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**options)  # type: ignore[arg-type]


def test_defaults_follow_the_recipe() -> None:
    head, released = TrainConfig(), TrainConfig(head="none", trainable="all")
    assert (head.epochs, head.batch_size, head.base_lr, head.lr_milestones) == (
        training.HEAD_EPOCHS, training.HEAD_BATCH, training.HEAD_LR, ())
    assert (released.epochs, released.batch_size, released.base_lr, released.loss, released.augment) == (
        100, 64, training.RELEASED_LR, "triplet", "released")
    assert released.milestone_epochs() == [37, 62, 87]
