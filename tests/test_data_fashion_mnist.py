"""Tests of ddpm_jax.data.fashion_mnist: IDX files, Debian's copy, a data_dir, none at all."""

import gzip
import os
import struct

import numpy as np
import pytest

from configs import default
from ddpm_jax import data
from ddpm_jax.data import fashion_mnist

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
needs_debian = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_DIR, 'train-images-idx3-ubyte.gz')),
    reason='Debian package dataset-fashion-mnist is not installed')


def data_config(**kw):
  c = default.get_config().data
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def write_idx(path, array, magic_type=0x08):
  header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def test_read_idx_small_file(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  labels = np.array([3, 9], np.uint8)
  write_idx(tmp_path / 'img.gz', images)
  write_idx(tmp_path / 'lab.gz', labels)
  got = fashion_mnist.read_idx(tmp_path / 'img.gz')
  assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / 'lab.gz'), [3, 9])
  # Big-endian int32 payload, uncompressed file.
  ints = np.array([[1, -2], [70000, 5]], '>i4')
  header = bytes([0, 0, 0x0C, 2]) + struct.pack('>2I', 2, 2)
  (tmp_path / 'ints').write_bytes(header + ints.tobytes())
  got = fashion_mnist.read_idx(tmp_path / 'ints')
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, [[1, -2], [70000, 5]])


def test_read_idx_corrupt(tmp_path):
  images = np.zeros((4, 5, 5), np.uint8)
  header = bytes([0, 0, 0x08, 3]) + struct.pack('>3I', 4, 5, 5)
  with gzip.open(tmp_path / 'short.gz', 'wb') as f:
    f.write(header + images.tobytes()[:-3])
  with pytest.raises(data.DatasetError, match='corrupt'):
    fashion_mnist.read_idx(tmp_path / 'short.gz')
  (tmp_path / 'bad.gz').write_bytes(b'\x1f\x8b' + b'garbage' * 10)
  with pytest.raises(data.DatasetError, match='bad.gz'):
    fashion_mnist.read_idx(tmp_path / 'bad.gz')
  (tmp_path / 'magic').write_bytes(b'\x01\x02\x03\x04' + b'\x00' * 8)
  with pytest.raises(data.DatasetError, match='magic'):
    fashion_mnist.read_idx(tmp_path / 'magic')


@needs_debian
def test_real_fashion_mnist_files():
  images, labels = fashion_mnist.load(DEBIAN_DIR, 'train')
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (60000,) and labels.min() == 0 and labels.max() == 9
  np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
  assert int(images.sum(dtype=np.int64)) == 3431114169  # Mean 72.94035223214286.
  assert images.mean(dtype=np.float64) == pytest.approx(72.94035223214286, abs=1e-9)
  np.testing.assert_array_equal(labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
  test_images, test_labels = fashion_mnist.load(DEBIAN_DIR, 'test')
  assert test_images.shape == (10000, 28, 28, 1)
  assert int(test_images.sum(dtype=np.int64)) == 573469082
  np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)


@needs_debian
def test_fashion_mnist_pipeline_end_to_end():
  cfg = data_config(dataset='fashion_mnist', channels=1, image_size=32)
  assert len(data.open_source(cfg)) == 60000
  test = data.load_split(cfg, 'test', max_examples=5)
  raw, _ = fashion_mnist.load(DEBIAN_DIR, 'test')
  assert test.shape == (5, 32, 32, 1) and test.dtype == np.uint8
  np.testing.assert_array_equal(test[:, 2:30, 2:30], raw[:5])
  assert not test[:, :2].any() and not test[:, :, 30:].any()
  batch = next(data.create_train_iterator(cfg, 128, seed=0))
  assert batch.shape == (128, 32, 32, 1) and batch.dtype == np.float32
  assert batch.min() == -1.0 and batch.max() == 1.0


def test_fashion_mnist_from_data_dir_and_missing(tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist, 'SYSTEM_DIR', str(tmp_path / 'nowhere'))
  monkeypatch.setattr(fashion_mnist, 'CACHE_DIR', str(tmp_path / 'cache'))

  def no_download(directory):
    raise OSError('no network in tests')

  monkeypatch.setattr(fashion_mnist, 'download', no_download)
  cfg = data_config(dataset='fashion_mnist', channels=1, image_size=28,
                    data_dir=str(tmp_path / 'empty'))
  with pytest.raises(data.DatasetError, match='apt-get install dataset-fashion-mnist'):
    data.open_source(cfg)
  with pytest.raises(data.DatasetError, match='--config.data.data_dir'):
    data.load_split(cfg, 'train')
  # A tiny fake copy in data_dir is used.
  d = tmp_path / 'fm'
  d.mkdir()
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('t10k', 4)):
    write_idx(d / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28), np.uint8))
    write_idx(d / f'{split}-labels-idx1-ubyte.gz', rng.integers(0, 10, (n,), np.uint8))
  cfg.data_dir = str(d)
  assert len(data.open_source(cfg)) == 6
  assert data.load_split(cfg, 'test').shape == (4, 28, 28, 1)
  assert data.load_split(cfg, 'train+test').shape == (10, 28, 28, 1)
