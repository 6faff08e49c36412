"""Grids as people see them: nearest-neighbour upscaling of small grids; figures written whole."""

import os

import numpy as np
from PIL import Image

from ddpm_jax import image_files


def test_upscale_is_the_smallest_integer_factor_reaching_the_width():
  grid = image_files.make_grid(np.arange(8 * 32 * 32).reshape(8, 32, 32, 1).astype(np.uint8))
  assert grid.shape == (2 + 3 * 34, 2 + 3 * 34, 1)  # 3 x 3 tiles (8 images), 2-pixel borders.
  big = image_files.upscale(grid)  # 104 px -> factor 5 = 520 >= 512.
  assert big.shape == (520, 520, 1)
  np.testing.assert_array_equal(big[::5, ::5], grid)  # Each pixel a 5x5 block of itself.
  np.testing.assert_array_equal(big[4::5, 4::5], grid)
  assert image_files.upscale(grid, min_width=40) is grid  # Wide enough already.
  assert image_files.upscale(grid[:10, :10], max_factor=8).shape == (80, 80, 1)  # Capped.


def test_save_grid_writes_the_upscaled_grid(tmp_path):
  x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 1)).astype(np.uint8)
  path = image_files.save_grid(str(tmp_path / 'g.png'), x)
  with Image.open(path) as im:
    got = np.asarray(im)
  assert got.shape == (2 * 274, 2 * 274)  # 8 x 8 tiles of 34 px + 2: 274 -> factor 2.
  np.testing.assert_array_equal(got[::2, ::2], image_files.make_grid(x)[..., 0])


def test_figure_is_written_when_the_block_ends(tmp_path):
  path = str(tmp_path / 'sub' / 'f.png')
  with image_files.figure(path, rows=2, cols=3, panel=(2, 1), dpi=50) as axes:
    assert axes.shape == (2, 3)
    assert not os.path.exists(path)
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size == (300, 100)  # 3 x 2 in by 2 x 1 in, at 50 dpi.
  assert os.listdir(tmp_path / 'sub') == ['f.png']  # No temporary file left.
