"""Image folders (`config.data.dataset='folder'`): 16-bit images keep their range, odd shapes
are reported."""

import logging

import numpy as np
from PIL import Image

from ddpm_jax import input_pipeline


def test_16_bit_grey_pngs_are_scaled_not_clipped(tmp_path):
  """PIL's convert('L') clips I;16 at 255: a folder of 16-bit PNGs trained as white squares."""
  values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits.
  (tmp_path / 'a').mkdir()
  Image.fromarray(values).save(tmp_path / 'a' / 'grey16.png')
  assert Image.open(tmp_path / 'a' / 'grey16.png').mode == 'I;16'
  for channels in (1, 3):
    source = input_pipeline.FolderSource(str(tmp_path / 'a'), channels)
    image, _ = source[0]
    assert image.dtype == np.uint8 and image.shape == (1, 4, channels)
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(image[..., -1], image[..., 0])


def test_a_strip_of_pixels_is_reported_once(tmp_path, caplog):
  """A 1x200 image became a flat square without a word."""
  for i in range(3):
    Image.fromarray(np.full((1, 200), 100 + i, np.uint8)).save(tmp_path / f'strip{i}.png')
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'tiny.png')
  source = input_pipeline.FolderSource(str(tmp_path), 1, image_size=32)
  with caplog.at_level(logging.WARNING):
    for i in range(4):
      source[i]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 2  # One per kind, not one per image.
  assert 'strip0.png' in warnings[0] and 'it is 1x200: the centre crop keeps only 0.5%' in (
      warnings[0])
  assert 'tiny.png' in warnings[1] and 'upscaled 8.0x to 32' in warnings[1]
