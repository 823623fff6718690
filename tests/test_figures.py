"""Tests of how samples are displayed and of the paper's figures (figures.py)."""

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from torch import nn

import figures
from diffusion_model import DiffusionModel


@pytest.mark.parametrize("n, shape", [(1, (1, 1)), (4, (2, 2)), (5, (2, 3)), (10, (3, 4)), (100, (10, 10))])
def test_grid_shape(n, shape):
    assert figures.grid_shape(n) == shape


def test_tile_pads_a_non_square_batch():
    images = torch.full((5, 1, 3, 2), 1.0)
    grid = figures.tile(images)
    assert grid.shape == (2 * 3, 3 * 2, 1) and grid.dtype == np.uint8
    assert (grid[:3, :] == 255).all()  # first row: three white images
    assert (grid[3:, :4] == 255).all() and (grid[3:, 4:] == 0).all()  # then two and a black pad


def test_display_modes():
    images = torch.tensor([[-3.0, -1.0, 0.0, 1.0, 2.0]]).reshape(1, 1, 1, 5)
    assert figures.to_uint8(images, "clamp").flatten().tolist() == [0, 0, 128, 255, 255]
    assert figures.to_uint8(images, "minmax").flatten().tolist() == [0, 102, 153, 204, 255]
    with pytest.raises(ValueError, match="display must be one of"):
        figures.to_uint8(images, "sigmoid")


def test_figures_are_written(tmp_path: Path):
    ddpm = DiffusionModel(nn.Identity(), image_chw=(1, 28, 28))
    figures.save_forward_process(ddpm, torch.zeros(2, 1, 28, 28), tmp_path / "fwd.png", steps=(0, 999, 5000))
    figures.save_embedding_matrix(tmp_path / "pe.png")
    figures.save_loss_curves(dict(train_loss=[1.0, 0.5], val_loss=[1.1, 0.6]), tmp_path / "loss.png")
    for name in ("fwd.png", "pe.png", "loss.png"):
        image = imageio.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100, name
    with pytest.raises(ValueError, match="no step"):
        figures.save_forward_process(ddpm, torch.zeros(1, 1, 28, 28), tmp_path / "x.png", steps=(1000,))


