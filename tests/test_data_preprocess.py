"""Tests of ddpm_jax.data.preprocess: channels, crop, pad, resize, [-1, 1]."""

import numpy as np
from PIL import Image

from ddpm_jax.data import preprocess as pp


def test_pad_28_to_32_centred():
  image = np.full((28, 28, 1), 200, np.uint8)
  out = pp.preprocess_image(image, 32, 1)
  assert out.shape == (32, 32, 1) and out.dtype == np.uint8
  assert (out[2:30, 2:30] == 200).all()
  assert out.sum() == 200 * 28 * 28  # Zeros everywhere else.
  assert (out[:2] == 0).all() and (out[30:] == 0).all()
  assert (out[:, :2] == 0).all() and (out[:, 30:] == 0).all()
  # Vectorised version agrees.
  batch = np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8)
  vec = pp.preprocess_images(batch, 32, 1)
  np.testing.assert_array_equal(vec, np.stack([pp.preprocess_image(b, 32, 1) for b in batch]))


def test_center_crop_non_square():
  image = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6, 1)
  crop = pp.center_crop(image)
  np.testing.assert_array_equal(crop[..., 0], image[:, 1:5, 0])
  tall = np.arange(7 * 3 * 3, dtype=np.uint8).reshape(7, 3, 3)
  np.testing.assert_array_equal(pp.center_crop(tall), tall[2:5])


def test_resize_shape_dtype_and_antialias():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (50, 70, 3), np.uint8)
  out = pp.preprocess_image(image, 16, 3)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  # Odd margin (29 -> 32) is resized, not padded.
  assert pp.preprocess_image(rng.integers(0, 256, (29, 29), np.uint8), 32, 1).shape == (32, 32, 1)
  # Antialiasing: a one-pixel checkerboard downsampled 4x is mid-grey, not aliased.
  checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None]
  small = pp.resize(checker, 16)
  assert small.shape == (16, 16, 1)
  assert abs(float(small[2:-2, 2:-2].mean()) - 127.5) < 3
  assert small[2:-2, 2:-2].std() < 3


def test_channel_conversion():
  grey = np.arange(16, dtype=np.uint8).reshape(4, 4)
  rgb = pp.preprocess_image(grey, 4, 3)
  assert rgb.shape == (4, 4, 3)
  np.testing.assert_array_equal(rgb[..., 0], grey)
  np.testing.assert_array_equal(rgb[..., 2], grey)
  colour = np.random.default_rng(1).integers(0, 256, (5, 5, 3), np.uint8)
  l = pp.convert_channels(colour, 1)
  np.testing.assert_array_equal(l[..., 0], np.asarray(Image.fromarray(colour).convert('L')))


def test_to_float_range_exact():
  x = pp.to_float(np.array([0, 255, 127, 128], np.uint8))
  assert x.dtype == np.float32
  assert x[0] == -1.0 and x[1] == 1.0
  np.testing.assert_allclose(x[2:], [127 / 127.5 - 1, 128 / 127.5 - 1], rtol=0, atol=1e-7)
