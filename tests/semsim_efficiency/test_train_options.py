"""Sample-efficiency training options: init from a checkpoint, frozen stages, augmentation, early stopping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from semsim_audit.cli.main import app
from semsim_audit.semsim import SemSim
from semsim_audit.semsim.annotations import read_annotations, split_identities
from semsim_audit.semsim.checkpoint import load_checkpoint, save_checkpoint
from semsim_audit.semsim.model import SemSimNet
from semsim_audit.semsim.simulated import simulate_annotations, write_released_layout
from semsim_audit.semsim.train import ImagePool, TrainConfig, _augmented, _best_epoch, train

FAST = {"batch_size": 8, "val_fraction": 0.34, "seed": 3, "device": "cpu", "annotator": "human"}
RELEASED = {**FAST, "head": "none", "trainable": "all", "loss": "triplet"}


@pytest.fixture(scope="module")
def simulated_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six simulated-annotator identities with four reconstructions each, in the released layout."""
    return write_released_layout(simulate_annotations(6, per_identity=4, seed=0),
                                 tmp_path_factory.mktemp("simulated"))


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("init") / "start.safetensors"
    save_checkpoint(path, SemSimNet(width=4), threshold=0.5, annotator="proxy", data="random start (test)")
    return path


def test_init_from_a_checkpoint_with_frozen_stages_changes_only_the_last_stage(
        simulated_folder: Path, start_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned.safetensors"
    config = TrainConfig(**RELEASED, epochs=1, init=str(start_checkpoint), freeze_epochs=1, keep="last")
    result = train(simulated_folder, out, config, progress=False)
    before, after = load_checkpoint(start_checkpoint)[0].state_dict(), load_checkpoint(out)[0].state_dict()
    assert result.metadata.width == 4  # taken from the init checkpoint: width was left unset
    frozen = [k for k in before if not k.startswith("backbone.layer4.")]
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # BatchNorm statistics included
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.layer4."))


def test_a_width_that_contradicts_the_init_checkpoint_is_refused(
        simulated_folder: Path, start_checkpoint: Path, tmp_path: Path) -> None:
    config = TrainConfig(**FAST, epochs=1, init=str(start_checkpoint), width=8)
    with pytest.raises(ValueError, match="width 8 does not match"):
        train(simulated_folder, tmp_path / "x.safetensors", config, progress=False)
    with pytest.raises(ValueError, match="init"):
        train(simulated_folder, tmp_path / "y.safetensors",
              TrainConfig(**FAST, epochs=1, init=str(tmp_path / "missing.safetensors")), progress=False)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_validation_epoch(simulated_folder: Path, start_checkpoint: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "best.safetensors"
    config = TrainConfig(**RELEASED, epochs=6, init=str(start_checkpoint), lr=0.2, patience=1, keep="best")
    result = train(simulated_folder, out, config, progress=False)
    history = result.history
    best = _best_epoch(history)
    training = result.metadata.training
    assert training["best_epoch"] == best and training["epochs_run"] == len(history)
    # Stopped exactly `patience` epochs after the best one, or ran out of epochs.
    assert len(history) == config.epochs or len(history) == best + config.patience
    # The written weights are the best epoch's: they score that epoch's validation AUC again.
    annotations = read_annotations(simulated_folder)
    pool = ImagePool(annotations)
    _, validation = split_identities(annotations.identities, config.val_fraction, config.seed)
    names = [ident.name for ident in annotations.identities]
    pairs, labels = [], []
    for ident in validation:
        original, positives, negatives = pool.identities[names.index(ident.name)]
        pairs += [(original, p) for p in positives] + [(original, n) for n in negatives]
        labels += [True] * len(positives) + [False] * len(negatives)
    pairs_array = np.asarray(pairs)
    sem = SemSim.load(out, device="cpu")
    distances = sem.distance(pool.images(pairs_array[:, 0]), pool.images(pairs_array[:, 1])).numpy()
    from semsim_audit.semsim.calibration import roc_auc

    assert roc_auc(-distances, labels) == pytest.approx(history[best - 1]["val_auc"], abs=1e-6)
    assert training["val_auc"] == history[best - 1]["val_auc"]


def test_best_epoch_is_the_first_with_the_highest_validation_auc() -> None:
    history = [{"epoch": 1, "val_auc": 0.6}, {"epoch": 2, "val_auc": 0.8}, {"epoch": 3, "val_auc": 0.8},
               {"epoch": 4, "val_auc": 0.7}]
    assert _best_epoch(history) == 2
    assert _best_epoch([{"epoch": 1, "val_auc": None}]) is None


def test_augmentation_strengths() -> None:
    images = torch.rand(16, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(_augmented(images, generator, "none"), images)
    released = _augmented(images, torch.Generator().manual_seed(0), "released")
    strong = _augmented(images, torch.Generator().manual_seed(0), "strong")
    assert released.shape == strong.shape == images.shape
    assert 0.0 <= float(strong.min()) and float(strong.max()) <= 1.0
    # Strong = the released crop/flip plus colour jitter: mean colours move, released ones stay close.
    colour_shift = (strong.mean(dim=(2, 3)) - released.mean(dim=(2, 3))).abs().mean()
    assert colour_shift > 0.01


@pytest.mark.parametrize(("field", "value", "message"), [
    ("augment", "heavy", "augment"), ("keep", "worst", "keep"), ("patience", -1, "patience"),
    ("freeze_epochs", -2, "freeze_epochs"), ("init", " ", "init"), ("width", 0, "width"),
])
def test_bad_training_options_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_cli_takes_the_new_options(simulated_folder: Path, start_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.safetensors"
    result = CliRunner().invoke(app, [
        "semsim", "train", "--data", str(simulated_folder), "--out", str(out), "--epochs", "2",
        "--batch", "8", "--device", "cpu", "--val-fraction", "0.34", "--init", str(start_checkpoint),
        "--head", "none", "--trainable", "all",
        "--freeze-epochs", "1", "--augment", "strong", "--patience", "1", "--keep", "best"])
    assert result.exit_code == 0, result.output
    recipe = load_checkpoint(out)[1].training["recipe"]
    assert (recipe["init"], recipe["freeze_epochs"], recipe["augment"], recipe["patience"]) == (
        str(start_checkpoint), 1, "strong", 1)
    bad = CliRunner().invoke(app, ["semsim", "train", "--data", str(simulated_folder), "--out",
                                   str(tmp_path / "bad.safetensors"), "--augment", "heavy"])
    assert bad.exit_code == 2 and "augment" in bad.output
    contradictory = CliRunner().invoke(app, ["semsim", "train", "--data", str(simulated_folder), "--out",
                                             str(tmp_path / "bad.safetensors"), "--head", "none"])
    assert contradictory.exit_code == 2 and "needs one of the stats heads" in contradictory.output
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_stats_head_starts_on_the_init_checkpoints_backbone_and_continues_its_own_head(
        simulated_folder: Path, start_checkpoint: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.safetensors"
    train(simulated_folder, first, TrainConfig(**FAST, epochs=2, init=str(start_checkpoint), keep="last"),
          progress=False)
    start, headed = load_checkpoint(start_checkpoint)[0].state_dict(), load_checkpoint(first)[0].state_dict()
    assert load_checkpoint(first)[1].head == "stats"
    assert all(torch.equal(start[k], headed[k]) for k in start)  # the whole backbone, untouched
    # From a stats checkpoint: its head and standardisation carry on (standardisation is not refitted).
    second = tmp_path / "second.safetensors"
    train(simulated_folder, second, TrainConfig(**FAST, epochs=1, init=str(first), keep="last"),
          progress=False)
    continued = load_checkpoint(second)[0].state_dict()
    assert torch.equal(continued["feature_mean"], headed["feature_mean"])
    assert not torch.equal(continued["head.0.weight"], headed["head.0.weight"])
