"""Image files of any bit depth decode to uint8 with their full range, and a folder's odd
shapes are reported."""

import logging

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import image_files, input_pipeline


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


def test_other_modes_scale_by_their_range():
  np.testing.assert_array_equal(
      image_files.to_uint8(np.array([0.0, 0.5, 1.0], np.float32), 'F'), [0, 128, 255])
  np.testing.assert_array_equal(
      image_files.to_uint8(np.array([np.iinfo(np.int32).min, 0, np.iinfo(np.int32).max]), 'I'),
      [0, 128, 255])
  np.testing.assert_array_equal(image_files.to_uint8(np.array([0, 65535]), 'I'), [0, 255])


def test_8_bit_images_decode_as_before(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'rgb.png')
  np.testing.assert_array_equal(image_files.decode(tmp_path / 'rgb.png', 3), rgb)
  np.testing.assert_array_equal(image_files.decode(tmp_path / 'rgb.png', 1),
                                np.asarray(Image.fromarray(rgb).convert('L')))


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


@pytest.mark.parametrize('shape,size,kind,expect', [
    ((64, 64), 32, None, None), ((48, 64), 32, None, None),
    ((32, 100), 32, 'aspect', 'keeps only 32%'), ((12, 12), 32, 'upscaled', 'upscaled 2.7x'),
    ((28, 28), 32, None, None), ((0, 5), 32, 'empty', 'empty')])
def test_shape_warning(shape, size, kind, expect):
  got = image_files.shape_warning(*shape, size)
  assert got is None if kind is None else (got[0] == kind and expect in got[1])
