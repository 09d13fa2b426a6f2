"""The one PNG writer and the one resize: what every layer that writes or resizes images relies on."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semsim_audit.core import resize, save_png


def _read(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def test_colour_and_grey_images_keep_their_channels(tmp_path: Path) -> None:
    colour, grey = torch.rand(3, 5, 7), torch.rand(1, 5, 7)
    save_png(colour, tmp_path / "colour.png")
    save_png(grey, tmp_path / "deeper" / "grey.png")  # the folder is created
    mode, pixels = _read(tmp_path / "colour.png")
    assert mode == "RGB" and pixels.shape == (5, 7, 3)
    mode, pixels = _read(tmp_path / "deeper" / "grey.png")
    assert mode == "L" and pixels.shape == (5, 7)


def test_levels_are_clamped_and_rounded_half_to_even(tmp_path: Path) -> None:
    # 0.5 / 255 lies halfway between levels 0 and 1, 1.5 / 255 between 1 and 2.
    values = torch.tensor([-1.0, 0.5 / 255, 1.5 / 255, 0.25, 2.0])
    save_png(values.view(1, 1, -1), tmp_path / "levels.png")
    assert _read(tmp_path / "levels.png")[1].tolist() == [[0, 0, 2, 64, 255]]


def test_save_png_refuses_what_is_not_one_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="save_png needs"):
        save_png(torch.rand(2, 3, 4, 4), tmp_path / "batch.png")


def test_resize_treats_one_image_as_a_batch_of_one() -> None:
    images = torch.rand(2, 3, 40, 24) * 1.2
    batch = resize(images, 32)
    assert batch.shape == (2, 3, 32, 32) and float(batch.max()) <= 1.0
    assert torch.equal(resize(images[1], 32), batch[1])
