"""The artefact library of the synthetic annotators: pure functions that do what their names say."""

import numpy as np
import pytest
import torch

from semsim_audit.semsim import artefacts


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_shuffling_patches_moves_whole_tiles() -> None:
    image = _image()
    assert torch.equal(artefacts.shuffle_patches(image, 8, np.arange(16)), image)
    order = np.arange(16)
    order[[0, 5]] = [5, 0]
    shuffled = artefacts.shuffle_patches(image, 8, order)
    assert torch.equal(shuffled[:, :8, :8], image[:, 8:16, 8:16])
    assert torch.equal(shuffled[:, 8:16, 8:16], image[:, :8, :8])
    assert torch.equal(shuffled[:, 16:, :], image[:, 16:, :])


def test_piecewise_flat_is_constant_on_each_cell_and_keeps_the_mean() -> None:
    image = _image(1)
    flat = artefacts.piecewise_flat(image, 4)
    cells = flat.unfold(1, 8, 8).unfold(2, 8, 8)
    assert torch.equal(cells, cells[..., :1, :1].expand_as(cells))
    assert float(flat.mean()) == pytest.approx(float(image.mean()), abs=1e-6)


def test_checkerboard_alternates_with_its_period() -> None:
    assert artefacts.checkerboard(4, 2).tolist() == [[-1, 1, -1, 1], [1, -1, 1, -1]] * 2
    assert artefacts.checkerboard(4, 4)[0].tolist() == [-1, -1, 1, 1]


def test_occlusion_fills_only_the_rectangle() -> None:
    image = _image(2)
    occluded = artefacts.occlude(image, 4, 6, 3, 5, torch.zeros(3, 1, 1))
    assert float(occluded[:, 4:7, 6:11].abs().sum()) == 0.0
    occluded[:, 4:7, 6:11] = image[:, 4:7, 6:11]
    assert torch.equal(occluded, image)


def test_blend_and_colour_changes_at_their_neutral_settings_change_nothing() -> None:
    image, other = _image(3), _image(4)
    assert torch.equal(artefacts.blend(image, other, 0.0), image)
    assert torch.equal(artefacts.blend(image, other, 1.0), other)
    for changed in (artefacts.adjust_contrast(image, 1.0), artefacts.adjust_saturation(image, 1.0),
                    artefacts.scale_channels(image, [1.0, 1.0, 1.0]), artefacts.adjust_gamma(image, 1.0),
                    artefacts.shift(image, 0, 0, margin=3)):
        assert torch.allclose(changed, image, atol=1e-6)


def test_shift_moves_the_content() -> None:
    image = _image(5)
    assert torch.equal(artefacts.shift(image, 2, -1, margin=3)[:, :-2, 1:], image[:, 2:, :-1])


def test_blur_smooths_and_fits_any_sigma_inside_the_image() -> None:
    image = _image(6)
    blurred = artefacts.blur(image, 6.0)  # a kernel of 37 pixels would not fit a 32-pixel image
    assert blurred.shape == image.shape and float(blurred.std()) < float(image.std()) / 3
