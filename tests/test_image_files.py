"""Image files of any bit depth decode to uint8 with their full range; which shapes
preprocessing would mostly crop away or upscale."""

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import image_files


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


@pytest.mark.parametrize('shape,size,kind,expect', [
    ((64, 64), 32, None, None), ((48, 64), 32, None, None),
    ((32, 100), 32, 'aspect', 'keeps only 32%'), ((12, 12), 32, 'upscaled', 'upscaled 2.7x'),
    ((28, 28), 32, None, None), ((0, 5), 32, 'empty', 'empty')])
def test_shape_warning(shape, size, kind, expect):
  got = image_files.shape_warning(*shape, size)
  assert got is None if kind is None else (got[0] == kind and expect in got[1])
