"""Simulated annotator: deterministic, writes the released layout, held-out crops disjoint from training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from semsim_audit.data import PHOTO_NAMES
from semsim_audit.semsim.simulated import (
    recognizable_probability,
    simulate_annotations,
    split_region,
    write_released_layout,
)


def test_same_seed_gives_identical_annotations_and_another_seed_does_not() -> None:
    first = simulate_annotations(4, per_identity=5, seed=3)
    again = simulate_annotations(4, per_identity=5, seed=3)
    other = simulate_annotations(4, per_identity=5, seed=4)
    assert torch.equal(first.originals, again.originals)
    assert torch.equal(first.reconstructions, again.reconstructions)
    assert torch.equal(first.recognizable, again.recognizable)
    assert first.damages == again.damages
    assert not torch.equal(first.originals, other.originals)


def test_smaller_sets_are_prefixes_of_larger_ones() -> None:
    small = simulate_annotations(3, per_identity=4, seed=1)
    large = simulate_annotations(6, per_identity=4, seed=1)
    assert torch.equal(large.originals[:3], small.originals)
    assert torch.equal(large.reconstructions[:12], small.reconstructions)
    assert torch.equal(large.recognizable[:12], small.recognizable)
    prefix = large.first(3)
    assert torch.equal(prefix.reconstructions, small.reconstructions) and prefix.damages == small.damages


def test_labels_follow_the_documented_rule() -> None:
    sims = simulate_annotations(30, per_identity=10, seed=0)
    for damage, severity, label in zip(sims.damages, sims.severities.tolist(), sims.recognizable.tolist(),
                                       strict=True):
        if damage == "none":
            assert label and severity == 0
        if damage == "other":
            assert not label and math.isinf(severity)
    # Both classes are well represented, and the tolerance curve is a falling sigmoid through 1/2 at s = 1.
    assert 0.3 < sims.recognizable.float().mean() < 0.7
    assert recognizable_probability(1.0) == pytest.approx(0.5)
    assert recognizable_probability(0.8) > 0.85 > 0.15 > recognizable_probability(1.25)


def test_heldout_crops_never_overlap_the_training_band() -> None:
    for photo_index in range(len(PHOTO_NAMES)):
        train, heldout = split_region(photo_index, "train"), split_region(photo_index, "heldout")
        rows = min(train[2], heldout[2]) - max(train[0], heldout[0])
        cols = min(train[3], heldout[3]) - max(train[1], heldout[1])
        assert rows <= 0 or cols <= 0  # the two bands share no pixel
    for split in ("train", "heldout"):
        sims = simulate_annotations(150, split=split, per_identity=1, seed=0)  # type: ignore[arg-type]
        assert len({box[0] for box in sims.boxes}) == len(PHOTO_NAMES)
        for photo_index, y, x, side in sims.boxes:
            top, left, bottom, right = split_region(photo_index, split)
            assert top <= y and y + side <= bottom and left <= x and x + side <= right
    train = simulate_annotations(20, per_identity=2, seed=0)
    heldout = simulate_annotations(20, split="heldout", per_identity=2, seed=0)
    assert torch.cdist(train.originals.flatten(1), heldout.originals.flatten(1)).min() > 0


def test_written_layout_is_the_released_one(tmp_path) -> None:
    sims = simulate_annotations(3, per_identity=6, seed=2, extra_negatives=2)
    root = write_released_layout(sims, tmp_path / "anno")
    base = root / "train_with_ori"
    for index in range(3):
        folder = base / str(index)
        originals = sorted(folder.glob("*_ori.png"))
        assert [p.name for p in originals] == [f"{index}_{sims.classes[index]}_ori.png"]
        positives = [p for p in folder.glob("*.png") if not p.name.endswith("_ori.png")]
        negatives = sorted((base / f"-{index}").glob("*.png")) if (base / f"-{index}").is_dir() else []
        mine = sims.owners == index
        assert len(positives) == int(sims.recognizable[mine].sum())
        assert len(negatives) == int((~sims.recognizable[mine]).sum())
    assert len(list((root / "others").glob("*.png"))) == 2
    record = json.loads((root / "simulated_annotator.json").read_text())["reconstructions"][0]
    image = Image.open(root / record["file"])
    assert image.size == (32, 32) and image.mode == "RGB"
    written = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.allclose(written, sims.reconstructions[0], atol=1 / 255)


def test_bad_arguments_are_refused_with_the_parameter_named() -> None:
    with pytest.raises(ValueError, match="identities"):
        simulate_annotations(0)
    with pytest.raises(ValueError, match="per_identity"):
        simulate_annotations(2, per_identity=0)
    with pytest.raises(ValueError, match="split"):
        simulate_annotations(2, split="test")  # type: ignore[arg-type]
