"""Tests of ddpm_jax.data.sources and tfds_source: which source a config opens, and the errors
that say how to prepare a missing dataset."""

import numpy as np
import pytest

from configs import default
from ddpm_jax import data
from ddpm_jax.data import sources


def data_config(**kw):
  c = default.get_config().data
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match='cifar10.*fashion_mnist.*folder'):
    data.open_source(data_config(dataset='imagenet'))


def test_missing_tfds_dataset_clear_error(tmp_path):
  cfg = data_config(dataset='cifar10', data_dir=str(tmp_path))
  with pytest.raises(data.DatasetError) as e:
    data.create_train_iterator(cfg, 8, 0)
  msg = str(e.value)
  for part in ("'cifar10'", str(tmp_path), 'pip install tensorflow-cpu',
               "download_and_prepare(file_format='array_record')"):
    assert part in msg
  cfg.dataset = 'celeb_a_hq'
  cfg.image_size = 256
  with pytest.raises(data.DatasetError, match=r'(?s)celeb_a_hq/256.*manual download'):
    data.load_split(cfg, 'train')


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    cfg = data_config(dataset='cifar10', image_size=32, channels=3)
    assert len(data.open_source(cfg)) == 20
    source = data.open_source(cfg, 'train')
    image, label = source[3]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and 0 <= label < 10
    images = data.load_split(cfg, 'test', max_examples=5)
    assert images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(images[3], image)  # Mock examples depend only on the index.
    it = data.create_train_iterator(cfg, 8, seed=0)
    batches = [next(it) for _ in range(4)]  # 32 examples: crosses the 20-example epoch.
    assert batches[0].shape == (8, 32, 32, 3) and batches[0].dtype == np.float32
    resumed = data.create_train_iterator(cfg, 8, seed=0, start_step=3)
    np.testing.assert_array_equal(next(resumed), batches[3])
    it.close()
    resumed.close()
    # Variable-sized images (oxford_flowers102) are cropped and resized.
    flowers = data.load_split(data_config(dataset='oxford_flowers102', image_size=16), 'train',
                            max_examples=3)
    assert flowers.shape == (3, 16, 16, 3)


def test_dataset_names_resolve_to_sources():
  assert sources.resolve_dataset('CIFAR10', 32) == ('tfds', 'cifar10')
  assert sources.resolve_dataset('lsun/church', 256) == ('tfds', 'lsun/church_outdoor')
  # celeb_a_hq: the smallest prepared resolution >= image_size.
  assert sources.resolve_dataset('celeb_a_hq', 200) == ('tfds', 'celeb_a_hq/256')
  assert sources.resolve_dataset('celeb_a_hq/64', 256) == ('tfds', 'celeb_a_hq/64')
  assert sources.resolve_dataset('folder', 64) == ('folder', None)
  with pytest.raises(ValueError, match='celeb_a_hq/<resolution>'):
    sources.resolve_dataset('celeb_a_hq/300', 32)


def test_array_source_classes_and_preprocessing_once():
  images = np.zeros((4, 28, 28, 1), np.uint8)
  src = data.ArraySource(images, np.array([0, 2, 1, 2]))
  assert src.classes == ('0', '1', '2') and src[1][1] == 2
  assert data.ArraySource(images).classes is None
  padded = src.preprocessed(32, 3)
  assert padded is src.preprocessed(32, 3) and padded.images.shape == (4, 32, 32, 3)
  assert not padded.images.flags.writeable and padded.classes == src.classes
