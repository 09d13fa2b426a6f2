"""Unambiguous pairs from attack outputs: picked by measured PSNR, never mixing crops of one photograph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semsim_audit import metrics
from semsim_audit.semsim.annotations import read_annotations
from semsim_audit.semsim.artefacts import blend
from semsim_audit.semsim.attack_outputs import AttackOutputs, unambiguous_pairs, write_pairs_layout
from semsim_audit.semsim.simulated import split_originals


@pytest.fixture(scope="module")
def outputs() -> AttackOutputs:
    """Six originals; per original a converged output (~45 dB), a first-iteration noise output, a noise
    output of a long run, and a half-converged output (a 50 % blend with noise)."""
    originals, photos = split_originals(6, "heldout", seed=3)
    generator = torch.Generator().manual_seed(0)
    images, owners, budgets = [], [], []
    for number, original in enumerate(originals):
        noise = torch.rand(original.shape, generator=generator)
        converged = (original + 0.005 * torch.randn(original.shape, generator=generator)).clamp(0, 1)
        for image, budget in ((converged, 300), (noise, 1), (noise, 300), (blend(original, noise, 0.5), 100)):
            images.append(image)
            owners.append(number)
            budgets.append(budget)
    return AttackOutputs(split="heldout", originals=originals, photos=photos, outputs=torch.stack(images),
                         owners=torch.tensor(owners), attacks=["idlg"] * len(owners),
                         models=["lenet"] * len(owners), iterations=torch.tensor(budgets))


def test_converged_outputs_and_their_transforms_are_the_only_recognizable_pairs(
        outputs: AttackOutputs) -> None:
    pairs = unambiguous_pairs(outputs)
    kinds = pairs.kinds
    assert kinds.count("converged") == 6
    for transform in ("shift", "flip", "colour", "blur"):
        assert kinds.count(f"converged+{transform}") == 6
    recognizable = {kind for kind, label in zip(kinds, pairs.recognizable.tolist(), strict=True) if label}
    assert recognizable == {"converged", "converged+shift", "converged+flip", "converged+colour",
                            "converged+blur"}
    converged = pairs.select([kind == "converged" for kind in kinds])
    assert bool((metrics.psnr(converged.originals, converged.reconstructions) >= 35).all())


def test_only_first_iteration_noise_counts_as_early_and_half_converged_outputs_are_left_out(
        outputs: AttackOutputs) -> None:
    pairs = unambiguous_pairs(outputs)
    early = pairs.select([kind == "early" for kind in pairs.kinds])
    assert len(early) == 6 and set(early.sources) == {"lenet/idlg/1"}
    assert not bool(early.recognizable.any())
    half = [kind for kind, source in zip(pairs.kinds, pairs.sources, strict=True)
            if source == "lenet/idlg/100"]
    assert half == ["other-original"] * 6  # only ever scored against another photograph's crop


def test_other_original_pairs_never_share_a_photograph(outputs: AttackOutputs) -> None:
    pairs = unambiguous_pairs(outputs)
    converged = metrics.psnr(outputs.originals[outputs.owners], outputs.outputs) >= 35
    for kind, expected in (("other-original", int((~converged).sum())),  # one per unconverged output
                           ("converged vs other", int(converged.sum()) * 5)):  # the output and 4 transforms
        others = pairs.select([k == kind for k in pairs.kinds])
        assert len(others) == expected and not bool(others.recognizable.any())
        for number in range(len(others)):
            original, output = int(others.identities[number]), int(others.outputs[number])
            assert outputs.photos[original] != outputs.photos[int(outputs.owners[output])]
            assert torch.equal(others.originals[number], outputs.originals[original])


def test_outputs_round_trip_and_pairs_write_the_released_layout(outputs: AttackOutputs,
                                                                 tmp_path: Path) -> None:
    path = outputs.save(tmp_path / "outputs.safetensors")
    loaded = AttackOutputs.load(path)
    assert torch.equal(loaded.outputs, outputs.outputs) and loaded.models == outputs.models
    pairs = unambiguous_pairs(loaded)
    write_pairs_layout(pairs, tmp_path / "layout", prefix="a")
    annotations = read_annotations(tmp_path / "layout")
    assert len(annotations.identities) == 6
    assert sum(len(i.recognizable) for i in annotations.identities) == int(pairs.recognizable.sum())
    assert sum(len(i.unrecognizable) for i in annotations.identities) == int((~pairs.recognizable).sum())


def test_a_file_that_is_not_attack_outputs_is_refused(random_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="not an attack-outputs file"):
        AttackOutputs.load(random_checkpoint)
