"""Tests of ddpm_jax.input_pipeline: IDX reading, preprocessing, deterministic batching, sources."""

import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from configs import default
from ddpm_jax import input_pipeline as ip

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


def indexed_source(n, size=8):
  """Image i is constant: channel 0 = i % 256, channel 1 = i // 256, channel 2 = 7."""
  images = np.zeros((n, size, size, 3), np.uint8)
  idx = np.arange(n)
  images[..., 0] = (idx % 256)[:, None, None]
  images[..., 1] = (idx // 256)[:, None, None]
  images[..., 2] = 7
  return ip.ArraySource(images)


def decode_indices(batch_f32):
  u8 = np.round((batch_f32 + 1) * 127.5).astype(np.int64)
  return u8[:, 0, 0, 0] + 256 * u8[:, 0, 0, 1]


def iterator(source, batch=16, seed=0, **kw):
  kw.setdefault('image_size', source.images.shape[1])
  kw.setdefault('channels', 3)
  return ip.TrainIterator(source, global_batch_size=batch, seed=seed, **kw)


# ------------------------------------------------------------------ IDX and Fashion-MNIST.


def test_read_idx_small_file(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  labels = np.array([3, 9], np.uint8)
  write_idx(tmp_path / 'img.gz', images)
  write_idx(tmp_path / 'lab.gz', labels)
  got = ip.read_idx(tmp_path / 'img.gz')
  assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(ip.read_idx(tmp_path / 'lab.gz'), [3, 9])
  # Big-endian int32 payload, uncompressed file.
  ints = np.array([[1, -2], [70000, 5]], '>i4')
  header = bytes([0, 0, 0x0C, 2]) + struct.pack('>2I', 2, 2)
  (tmp_path / 'ints').write_bytes(header + ints.tobytes())
  got = ip.read_idx(tmp_path / 'ints')
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, [[1, -2], [70000, 5]])


def test_read_idx_corrupt(tmp_path):
  images = np.zeros((4, 5, 5), np.uint8)
  header = bytes([0, 0, 0x08, 3]) + struct.pack('>3I', 4, 5, 5)
  with gzip.open(tmp_path / 'short.gz', 'wb') as f:
    f.write(header + images.tobytes()[:-3])
  with pytest.raises(ip.DatasetError, match='corrupt'):
    ip.read_idx(tmp_path / 'short.gz')
  (tmp_path / 'bad.gz').write_bytes(b'\x1f\x8b' + b'garbage' * 10)
  with pytest.raises(ip.DatasetError, match='bad.gz'):
    ip.read_idx(tmp_path / 'bad.gz')
  (tmp_path / 'magic').write_bytes(b'\x01\x02\x03\x04' + b'\x00' * 8)
  with pytest.raises(ip.DatasetError, match='magic'):
    ip.read_idx(tmp_path / 'magic')


@needs_debian
def test_real_fashion_mnist_files():
  images, labels = ip.load_fashion_mnist(DEBIAN_DIR, 'train')
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (60000,) and labels.min() == 0 and labels.max() == 9
  np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
  assert int(images.sum(dtype=np.int64)) == 3431114169  # Mean 72.94035223214286.
  assert images.mean(dtype=np.float64) == pytest.approx(72.94035223214286, abs=1e-9)
  np.testing.assert_array_equal(labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
  test_images, test_labels = ip.load_fashion_mnist(DEBIAN_DIR, 'test')
  assert test_images.shape == (10000, 28, 28, 1)
  assert int(test_images.sum(dtype=np.int64)) == 573469082
  np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)


@needs_debian
def test_fashion_mnist_pipeline_end_to_end():
  cfg = data_config(dataset='fashion_mnist', channels=1, image_size=32)
  assert len(ip.open_source(cfg)) == 60000
  test = ip.load_split(cfg, 'test', max_examples=5)
  raw, _ = ip.load_fashion_mnist(DEBIAN_DIR, 'test')
  assert test.shape == (5, 32, 32, 1) and test.dtype == np.uint8
  np.testing.assert_array_equal(test[:, 2:30, 2:30], raw[:5])
  assert not test[:, :2].any() and not test[:, :, 30:].any()
  batch = next(ip.create_train_iterator(cfg, 128, seed=0))
  assert batch.shape == (128, 32, 32, 1) and batch.dtype == np.float32
  assert batch.min() == -1.0 and batch.max() == 1.0


def test_fashion_mnist_from_data_dir_and_missing(tmp_path, monkeypatch):
  monkeypatch.setattr(ip, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'nowhere'))
  monkeypatch.setattr(ip, 'FASHION_MNIST_CACHE_DIR', str(tmp_path / 'cache'))

  def no_download(directory):
    raise OSError('no network in tests')

  monkeypatch.setattr(ip, '_download_fashion_mnist', no_download)
  cfg = data_config(dataset='fashion_mnist', channels=1, image_size=28,
                    data_dir=str(tmp_path / 'empty'))
  with pytest.raises(ip.DatasetError, match='apt-get install dataset-fashion-mnist'):
    ip.open_source(cfg)
  with pytest.raises(ip.DatasetError, match='--config.data.data_dir'):
    ip.load_split(cfg, 'train')
  # A tiny fake copy in data_dir is used.
  d = tmp_path / 'fm'
  d.mkdir()
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('t10k', 4)):
    write_idx(d / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28), np.uint8))
    write_idx(d / f'{split}-labels-idx1-ubyte.gz', rng.integers(0, 10, (n,), np.uint8))
  cfg.data_dir = str(d)
  assert len(ip.open_source(cfg)) == 6
  assert ip.load_split(cfg, 'test').shape == (4, 28, 28, 1)
  assert ip.load_split(cfg, 'train+test').shape == (10, 28, 28, 1)


# ------------------------------------------------------------------ Preprocessing.


def test_pad_28_to_32_centred():
  image = np.full((28, 28, 1), 200, np.uint8)
  out = ip.preprocess_image(image, 32, 1)
  assert out.shape == (32, 32, 1) and out.dtype == np.uint8
  assert (out[2:30, 2:30] == 200).all()
  assert out.sum() == 200 * 28 * 28  # Zeros everywhere else.
  assert (out[:2] == 0).all() and (out[30:] == 0).all()
  assert (out[:, :2] == 0).all() and (out[:, 30:] == 0).all()
  # Vectorised version agrees.
  batch = np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8)
  vec = ip.preprocess_images(batch, 32, 1)
  np.testing.assert_array_equal(vec, np.stack([ip.preprocess_image(b, 32, 1) for b in batch]))


def test_center_crop_non_square():
  image = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6, 1)
  crop = ip.center_crop(image)
  np.testing.assert_array_equal(crop[..., 0], image[:, 1:5, 0])
  tall = np.arange(7 * 3 * 3, dtype=np.uint8).reshape(7, 3, 3)
  np.testing.assert_array_equal(ip.center_crop(tall), tall[2:5])


def test_resize_shape_dtype_and_antialias():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (50, 70, 3), np.uint8)
  out = ip.preprocess_image(image, 16, 3)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  # Odd margin (29 -> 32) is resized, not padded.
  assert ip.preprocess_image(rng.integers(0, 256, (29, 29), np.uint8), 32, 1).shape == (32, 32, 1)
  # Antialiasing: a one-pixel checkerboard downsampled 4x is mid-grey, not aliased.
  checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None]
  small = ip.resize(checker, 16)
  assert small.shape == (16, 16, 1)
  assert abs(float(small[2:-2, 2:-2].mean()) - 127.5) < 3
  assert small[2:-2, 2:-2].std() < 3


def test_channel_conversion():
  grey = np.arange(16, dtype=np.uint8).reshape(4, 4)
  rgb = ip.preprocess_image(grey, 4, 3)
  assert rgb.shape == (4, 4, 3)
  np.testing.assert_array_equal(rgb[..., 0], grey)
  np.testing.assert_array_equal(rgb[..., 2], grey)
  colour = np.random.default_rng(1).integers(0, 256, (5, 5, 3), np.uint8)
  l = ip.convert_channels(colour, 1)
  np.testing.assert_array_equal(l[..., 0], np.asarray(Image.fromarray(colour).convert('L')))


def test_to_float_range_exact():
  x = ip.to_float(np.array([0, 255, 127, 128], np.uint8))
  assert x.dtype == np.float32
  assert x[0] == -1.0 and x[1] == 1.0
  np.testing.assert_allclose(x[2:], [127 / 127.5 - 1, 128 / 127.5 - 1], rtol=0, atol=1e-7)


# ------------------------------------------------------------------ Determinism.


def test_same_seed_same_batches_different_seed_differs():
  src = indexed_source(100)
  a, b, c = iterator(src, seed=3), iterator(src, seed=3), iterator(src, seed=4)
  for _ in range(3):
    ba, bb, bc = next(a), next(b), next(c)
    np.testing.assert_array_equal(ba, bb)
    assert not np.array_equal(ba, bc)
  assert ba.shape == (16, 8, 8, 3) and ba.dtype == np.float32


def test_resume_equals_uninterrupted():
  src = indexed_source(50)
  fresh = iterator(src, batch=12, seed=1)
  batches = [next(fresh) for _ in range(10)]  # Crosses epoch boundaries (50 / 12).
  resumed = iterator(src, batch=12, seed=1, start_step=7)
  assert resumed.step == 7
  for k in range(7, 10):
    np.testing.assert_array_equal(next(resumed), batches[k])
    np.testing.assert_array_equal(fresh.get_batch(k), batches[k])


def test_process_shards_concatenate_to_global_batch():
  rng = np.random.default_rng(0)
  src = ip.ArraySource(rng.integers(0, 256, (40, 6, 6, 3), np.uint8))  # Asymmetric images.
  one = iterator(src, batch=8, seed=5, image_size=6)
  for p_count in (2, 4):
    shards = [iterator(src, batch=8, seed=5, image_size=6, process_index=p,
                       process_count=p_count) for p in range(p_count)]
    for step in range(12):
      local = [next(s) for s in shards]
      assert local[0].shape == (8 // p_count, 6, 6, 3)
      np.testing.assert_array_equal(np.concatenate(local), one.get_batch(step))


def test_every_example_once_per_epoch():
  n, batch = 96, 16
  it = iterator(indexed_source(n), batch=batch, seed=11)
  for _ in range(2):  # Two epochs, each a different permutation of all examples.
    seen = np.concatenate([decode_indices(next(it)) for _ in range(n // batch)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  e0, e1 = it.permutation(0), it.permutation(1)
  assert not np.array_equal(e0, e1)
  # Batch size not dividing the dataset: the stream still covers each epoch once.
  it = iterator(indexed_source(30), batch=8, seed=2)
  stream = np.concatenate([decode_indices(next(it)) for _ in range(15)])  # 120 = 4 epochs.
  for e in range(4):
    np.testing.assert_array_equal(np.sort(stream[30 * e:30 * (e + 1)]), np.arange(30))


def test_about_half_flipped():
  image = np.zeros((1, 4, 4, 1), np.uint8)
  image[0, :, 0] = 255  # Left column white; flipped -> right column white.
  src = ip.ArraySource(np.repeat(image, 10, axis=0))
  it = iterator(src, batch=64, image_size=4, channels=1)
  flipped = np.concatenate([next(it)[:, 0, -1, 0] == 1.0 for _ in range(4)])
  assert 0.4 < flipped.mean() < 0.6
  # The flip decisions are what flip_mask says.
  np.testing.assert_array_equal(flipped[:64], ip.flip_mask(0, 0, 64))
  no_flip = iterator(src, batch=64, image_size=4, channels=1, random_flip=False)
  assert (next(no_flip)[:, 0, 0, 0] == 1.0).all()


def test_in_memory_source_needing_resize():
  rng = np.random.default_rng(3)
  src = ip.ArraySource(rng.integers(0, 256, (30, 20, 24, 3), np.uint8))
  with iterator(src, batch=6, seed=9, image_size=8) as it:  # Prefetching thread-pool path.
    batches = [next(it) for _ in range(7)]
    for step, b in enumerate(batches):
      assert b.shape == (6, 8, 8, 3)
      np.testing.assert_array_equal(b, it.get_batch(step))
    idx = it.example_indices(5)
    expected = np.stack([ip.preprocess_image(src.images[i], 8, 3) for i in idx])
    ip.flip_images(expected, it.flips(5))
    np.testing.assert_array_equal(batches[5], ip.to_float(expected))


def test_batch_not_divisible_by_processes():
  src = indexed_source(20)
  with pytest.raises(ValueError, match='not divisible'):
    iterator(src, batch=10, process_count=4)
  with pytest.raises(ValueError, match='not divisible'):
    ip.create_train_iterator(data_config(dataset='folder', data_dir='/nonexistent'), 10, 0,
                             process_index=1, process_count=3)


# ------------------------------------------------------------------ Sources.


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
  assert len(ip.open_source(cfg)) == 5
  images = ip.load_split(cfg, 'train')
  assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
  cfg.channels = 1
  assert ip.load_split(cfg, 'train').shape == (5, 16, 16, 1)
  with ip.create_train_iterator(cfg, 4, seed=0) as it:
    b0, b1 = next(it), next(it)
    assert b0.shape == (4, 16, 16, 1) and b0.dtype == np.float32
    assert -1.0 <= b0.min() and b0.max() <= 1.0
    np.testing.assert_array_equal(b1, it.get_batch(1))


def test_folder_missing_or_empty(tmp_path):
  cfg = data_config(dataset='folder', data_dir=str(tmp_path))
  with pytest.raises(ip.DatasetError, match='No images'):
    ip.load_split(cfg, 'train')
  cfg.data_dir = str(tmp_path / 'missing')
  with pytest.raises(ip.DatasetError, match='does not exist'):
    ip.create_train_iterator(cfg, 4, 0)
  cfg.data_dir = ''
  with pytest.raises(ip.DatasetError, match='data_dir'):
    ip.open_source(cfg)


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match='cifar10.*fashion_mnist.*folder'):
    ip.open_source(data_config(dataset='imagenet'))


def test_missing_tfds_dataset_clear_error(tmp_path):
  cfg = data_config(dataset='cifar10', data_dir=str(tmp_path))
  with pytest.raises(ip.DatasetError) as e:
    ip.create_train_iterator(cfg, 8, 0)
  msg = str(e.value)
  for part in ("'cifar10'", str(tmp_path), 'pip install tensorflow-cpu',
               "download_and_prepare(file_format='array_record')"):
    assert part in msg
  cfg.dataset = 'celeb_a_hq'
  cfg.image_size = 256
  with pytest.raises(ip.DatasetError, match=r'(?s)celeb_a_hq/256.*manual download'):
    ip.load_split(cfg, 'train')


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    cfg = data_config(dataset='cifar10', image_size=32, channels=3)
    assert len(ip.open_source(cfg)) == 20
    source = ip.open_source(cfg, 'train')
    image, label = source[3]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and 0 <= label < 10
    images = ip.load_split(cfg, 'test', max_examples=5)
    assert images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(images[3], image)  # Mock examples depend only on the index.
    it = ip.create_train_iterator(cfg, 8, seed=0)
    batches = [next(it) for _ in range(4)]  # 32 examples: crosses the 20-example epoch.
    assert batches[0].shape == (8, 32, 32, 3) and batches[0].dtype == np.float32
    resumed = ip.create_train_iterator(cfg, 8, seed=0, start_step=3)
    np.testing.assert_array_equal(next(resumed), batches[3])
    it.close()
    resumed.close()
    # Variable-sized images (oxford_flowers102) are cropped and resized.
    flowers = ip.load_split(data_config(dataset='oxford_flowers102', image_size=16), 'train',
                            max_examples=3)
    assert flowers.shape == (3, 16, 16, 3)


# --------------------------------------------------------------------------------------------
# Labelled batches (class-conditional models).


def _labelled_source(n=30, num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  return ip.ArraySource(rng.integers(0, 256, (n, 8, 8, 1), np.uint8),
                        rng.integers(0, num_classes, (n,)))


def test_labelled_batches_carry_each_example_its_own_label():
  src = _labelled_source()
  kw = dict(global_batch_size=8, seed=3, image_size=8, channels=1)
  plain = ip.TrainIterator(src, **kw)
  labelled = ip.TrainIterator(src, num_classes=5, **kw)
  for step in (0, 3, 7):  # Step 3 crosses an epoch boundary (30 examples, batch 8).
    batch = labelled.get_batch(step)
    assert set(batch) == {'image', 'label'} and batch['label'].dtype == np.int32
    np.testing.assert_array_equal(batch['image'], plain.get_batch(step))
    np.testing.assert_array_equal(batch['label'], src.labels[labelled.example_indices(step)])
  # next() yields the same dicts; process slices of the labels concatenate to the global ones.
  np.testing.assert_array_equal(next(iter(labelled))['label'], labelled.get_batch(0)['label'])
  halves = [ip.TrainIterator(src, num_classes=5, process_index=p, process_count=2, **kw)
            .get_batch(5)['label'] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), labelled.get_batch(5)['label'])


def test_labelled_batches_of_streaming_sources_match_in_memory_ones():
  src = _labelled_source()

  class Streaming:  # Any random-access source: (image, label) per index.
    def __len__(self):
      return len(src)

    def __getitem__(self, i):
      return src[i]

  kw = dict(global_batch_size=8, seed=3, image_size=8, channels=1, num_classes=5)
  with ip.TrainIterator(Streaming(), **kw) as stream:
    a, b = next(stream), ip.TrainIterator(src, **kw).get_batch(0)
  np.testing.assert_array_equal(a['label'], b['label'])
  np.testing.assert_array_equal(a['image'], b['image'])


def test_labels_missing_or_out_of_range_are_clear_errors():
  kw = dict(global_batch_size=8, seed=0, image_size=8, channels=1)
  unlabelled = ip.ArraySource(np.zeros((10, 8, 8, 1), np.uint8))
  with pytest.raises(ip.DatasetError, match='num_classes=0'):
    ip.TrainIterator(unlabelled, num_classes=10, **kw)
  with pytest.raises(ip.DatasetError, match=r'outside \[0, 3\)'):
    ip.TrainIterator(_labelled_source(num_classes=5), num_classes=3, **kw).get_batch(0)


def test_fashion_mnist_train_iterator_yields_its_labels():
  cfg = default.get_config().data
  cfg.dataset, cfg.image_size, cfg.channels = 'fashion_mnist', 32, 1
  it = ip.create_train_iterator(cfg, 16, seed=0, num_classes=10)
  batch = it.get_batch(0)
  _, labels = ip.load_fashion_mnist(ip.find_fashion_mnist_dir(), 'train')
  np.testing.assert_array_equal(batch['label'], labels[it.example_indices(0)])
  assert batch['image'].shape == (16, 32, 32, 1)
