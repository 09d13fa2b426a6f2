"""The layout head's extra statistics: sharpness that blur lowers and contrast does not move, and
half-means that a patch shuffle moves and a horizontal flip does not."""

from __future__ import annotations

import torch

from semsim_audit.data import load_dataset
from semsim_audit.semsim.artefacts import adjust_contrast, blur, shuffle_patches
from semsim_audit.semsim.model import SHARPNESS_SCALES, Head, SemSimNet, sharpness


def _photos() -> torch.Tensor:
    return load_dataset("photos", train=False).pixels[:16]


def _sharing_one_backbone(head: Head, other: Head) -> tuple[SemSimNet, SemSimNet]:
    """Two width-4 networks with these heads on the same seeded random backbone, in eval mode."""
    torch.manual_seed(0)
    first = SemSimNet(width=4, head=head).eval()
    second = SemSimNet(width=4, head=other).eval()
    second.backbone.load_state_dict(first.backbone.state_dict())
    return first, second


def test_blur_lowers_sharpness_and_contrast_leaves_it() -> None:
    images = _photos()
    sharp = sharpness(images)
    assert sharp.shape == (16, 2 * len(SHARPNESS_SCALES))
    blurred = sharpness(torch.stack([blur(image, 2.0) for image in images]))
    # The finest scale: the high frequencies' spread falls by more than e (log ratio), the gradient too.
    assert bool((blurred[:, 0] < sharp[:, 0] - 1.0).all()) and bool((blurred[:, 1] < sharp[:, 1] - 0.1).all())
    contrasted = sharpness(torch.stack([adjust_contrast(image, 0.6) for image in images]))
    assert torch.allclose(contrasted, sharp, atol=0.05)


def test_layout_statistics_see_a_shuffle_not_a_flip() -> None:
    model, plain = _sharing_one_backbone("stats-layout", "stats")
    images = _photos()
    with torch.no_grad():
        features = model.statistics(images)
        assert features.shape == (16, model.statistics_dim)
        # The layout head's statistics begin with the plain head's, then sharpness, then the halves.
        base = plain.statistics_dim
        torch.testing.assert_close(features[:, :base], plain.statistics(images))
        halves = slice(base + 2 * len(SHARPNESS_SCALES), None)
        flipped = model.statistics(images.flip(-1))[:, halves]
        top_to_bottom = torch.arange(16).reshape(4, 4).flip(0).reshape(-1)  # patch rows in reverse order
        shuffled = model.statistics(torch.stack([shuffle_patches(image, 8, top_to_bottom.numpy())
                                                 for image in images]))[:, halves]
    own = features[:, halves]
    flip_change = (flipped - own).norm(dim=1)
    shuffle_change = (shuffled - own).norm(dim=1)
    assert bool((shuffle_change > 3 * flip_change).all()), (flip_change, shuffle_change)


def test_the_early_head_reads_the_layout_statistics_of_the_stem_and_two_stages() -> None:
    early, layout = _sharing_one_backbone("stats-early", "stats-layout")
    images = _photos()
    with torch.no_grad():
        features, full = early.statistics(images), layout.statistics(images)
    # Channels: stem 4, stages 4, 8, 16, 32. The layout head's columns: means and spreads of the stem and
    # each stage (2 x 64), the sharpness, then the half-means (2 x 64); the early head keeps the stem's and
    # the first two stages' (16 channels) of both, and the sharpness.
    sharp = 2 * len(SHARPNESS_SCALES)
    kept = [*range(0, 32), *range(128, 128 + sharp), *range(128 + sharp, 128 + sharp + 32)]
    assert features.shape == (16, early.statistics_dim) == (16, len(kept))
    torch.testing.assert_close(features, full[:, kept])
