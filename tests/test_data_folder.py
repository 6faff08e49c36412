"""Tests of ddpm_jax.data.folder: image folders (`config.data.dataset='folder'`), any bit depth,
odd shapes reported, class subfolders as labels."""

import logging

import numpy as np
import pytest
from PIL import Image

from configs import default
from ddpm_jax import data
from ddpm_jax.data import folder


def data_config(**kw):
  c = default.get_config().data
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_16_bit_grey_pngs_are_scaled_not_clipped(tmp_path):
  """PIL's convert('L') clips I;16 at 255: a folder of 16-bit PNGs trained as white squares."""
  values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits.
  (tmp_path / 'a').mkdir()
  Image.fromarray(values).save(tmp_path / 'a' / 'grey16.png')
  assert Image.open(tmp_path / 'a' / 'grey16.png').mode == 'I;16'
  for channels in (1, 3):
    source = folder.FolderSource(str(tmp_path / 'a'), channels)
    image, _ = source[0]
    assert image.dtype == np.uint8 and image.shape == (1, 4, channels)
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(image[..., -1], image[..., 0])


def test_a_strip_of_pixels_is_reported_once(tmp_path, caplog):
  """A 1x200 image became a flat square without a word."""
  for i in range(3):
    Image.fromarray(np.full((1, 200), 100 + i, np.uint8)).save(tmp_path / f'strip{i}.png')
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'tiny.png')
  source = folder.FolderSource(str(tmp_path), 1, image_size=32)
  with caplog.at_level(logging.WARNING):
    for i in range(4):
      source[i]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 2  # One per kind, not one per image.
  assert 'strip0.png' in warnings[0] and 'it is 1x200: the centre crop keeps only 0.5%' in (
      warnings[0])
  assert 'tiny.png' in warnings[1] and 'upscaled 8.0x to 32' in warnings[1]


def test_other_modes_scale_by_their_range():
  np.testing.assert_array_equal(
      folder.to_uint8(np.array([0.0, 0.5, 1.0], np.float32), 'F'), [0, 128, 255])
  np.testing.assert_array_equal(
      folder.to_uint8(np.array([np.iinfo(np.int32).min, 0, np.iinfo(np.int32).max]), 'I'),
      [0, 128, 255])
  np.testing.assert_array_equal(folder.to_uint8(np.array([0, 65535]), 'I'), [0, 255])


def test_8_bit_images_decode_as_before(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'rgb.png')
  np.testing.assert_array_equal(folder.decode(tmp_path / 'rgb.png', 3), rgb)
  np.testing.assert_array_equal(folder.decode(tmp_path / 'rgb.png', 1),
                                np.asarray(Image.fromarray(rgb).convert('L')))


@pytest.mark.parametrize('shape,size,kind,expect', [
    ((64, 64), 32, None, None), ((48, 64), 32, None, None),
    ((32, 100), 32, 'aspect', 'keeps only 32%'), ((12, 12), 32, 'upscaled', 'upscaled 2.7x'),
    ((28, 28), 32, None, None), ((0, 5), 32, 'empty', 'empty')])
def test_shape_warning(shape, size, kind, expect):
  got = folder.shape_warning(*shape, size)
  assert got is None if kind is None else (got[0] == kind and expect in got[1])


def test_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / 'sub').mkdir()
  sizes = [(20, 30), (40, 40), (17, 9)]
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(tmp_path / f'a{i}.png')
  Image.fromarray(rng.integers(0, 256, (12, 12), np.uint8)).save(tmp_path / 'sub' / 'g.PNG')
  Image.fromarray(rng.integers(0, 256, (33, 21, 3), np.uint8)).save(tmp_path / 'sub' / 'c.jpg')
  (tmp_path / 'notes.txt').write_text('not an image')
  cfg = data_config(dataset='folder', data_dir=str(tmp_path), image_size=16, channels=3)
  assert len(data.open_source(cfg)) == 5
  images = data.load_split(cfg, 'train')
  assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
  cfg.channels = 1
  assert data.load_split(cfg, 'train').shape == (5, 16, 16, 1)
  with data.create_train_iterator(cfg, 4, seed=0) as it:
    b0, b1 = next(it), next(it)
    assert b0.shape == (4, 16, 16, 1) and b0.dtype == np.float32
    assert -1.0 <= b0.min() and b0.max() <= 1.0
    np.testing.assert_array_equal(b1, it.get_batch(1))


def test_folder_missing_or_empty(tmp_path):
  cfg = data_config(dataset='folder', data_dir=str(tmp_path))
  with pytest.raises(data.DatasetError, match='No images'):
    data.load_split(cfg, 'train')
  cfg.data_dir = str(tmp_path / 'missing')
  with pytest.raises(data.DatasetError, match='does not exist'):
    data.create_train_iterator(cfg, 4, 0)
  cfg.data_dir = ''
  with pytest.raises(data.DatasetError, match='data_dir'):
    data.open_source(cfg)


def test_class_subfolders_are_labels(tmp_path):
  rng = np.random.default_rng(0)
  for name, n in (('zebra', 2), ('ant', 3)):
    (tmp_path / name / 'deeper').mkdir(parents=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 256, (9, 9, 3), np.uint8)).save(
          tmp_path / name / ('deeper' if i else '.') / f'{i}.png')
  source = folder.FolderSource(str(tmp_path), 3)
  assert source.classes == ('ant', 'zebra')  # Sorted by name; nested files count.
  assert [source[i][1] for i in range(len(source))] == [0, 0, 0, 1, 1]
  cfg = data_config(dataset='folder', data_dir=str(tmp_path), image_size=8)
  batch = data.create_train_iterator(cfg, 5, seed=0, num_classes=2).get_batch(0)
  assert sorted(batch['label'].tolist()) == [0, 0, 0, 1, 1]
  with pytest.raises(data.DatasetError, match=r'config.model.num_classes=10 but the dataset has '
                     r'2 classes \(ant, zebra\): set config.model.num_classes=2'):
    data.create_train_iterator(cfg, 5, seed=0, num_classes=10)
  # A loose image beside the subfolders: no classes, so no labels.
  Image.fromarray(rng.integers(0, 256, (9, 9, 3), np.uint8)).save(tmp_path / 'loose.png')
  assert folder.FolderSource(str(tmp_path), 3).classes is None
  with pytest.raises(data.DatasetError, match='num_classes=0'):
    data.create_train_iterator(cfg, 5, seed=0, num_classes=2)
