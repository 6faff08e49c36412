"""Tests of ddpm_jax.data.pipeline: batches a pure function of (seed, step) whatever the number
of processes, exact resume, per-example flips, labels."""

import numpy as np
import pytest
from PIL import Image

from configs import default
from ddpm_jax import data
from ddpm_jax.data import fashion_mnist


def data_config(**kw):
  c = default.get_config().data
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def indexed_source(n, size=8):
  """Image i is constant: channel 0 = i % 256, channel 1 = i // 256, channel 2 = 7."""
  images = np.zeros((n, size, size, 3), np.uint8)
  idx = np.arange(n)
  images[..., 0] = (idx % 256)[:, None, None]
  images[..., 1] = (idx // 256)[:, None, None]
  images[..., 2] = 7
  return data.ArraySource(images)


def decode_indices(batch_f32):
  u8 = np.round((batch_f32 + 1) * 127.5).astype(np.int64)
  return u8[:, 0, 0, 0] + 256 * u8[:, 0, 0, 1]


def iterator(source, batch=16, seed=0, **kw):
  kw.setdefault('image_size', source.images.shape[1])
  kw.setdefault('channels', 3)
  return data.TrainIterator(source, global_batch_size=batch, seed=seed, **kw)


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
  src = data.ArraySource(rng.integers(0, 256, (40, 6, 6, 3), np.uint8))  # Asymmetric images.
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
  epoch = lambda e: np.concatenate([it.example_indices(s) for s in range(6 * e, 6 * e + 6)])
  assert not np.array_equal(epoch(0), epoch(1))
  # Batch size not dividing the dataset: the stream still covers each epoch once.
  it = iterator(indexed_source(30), batch=8, seed=2)
  stream = np.concatenate([decode_indices(next(it)) for _ in range(15)])  # 120 = 4 epochs.
  for e in range(4):
    np.testing.assert_array_equal(np.sort(stream[30 * e:30 * (e + 1)]), np.arange(30))


def test_about_half_flipped():
  image = np.zeros((1, 4, 4, 1), np.uint8)
  image[0, :, 0] = 255  # Left column white; flipped -> right column white.
  src = data.ArraySource(np.repeat(image, 10, axis=0))
  it = iterator(src, batch=64, image_size=4, channels=1)
  flipped = np.concatenate([next(it)[:, 0, -1, 0] == 1.0 for _ in range(4)])
  assert 0.4 < flipped.mean() < 0.6
  # The flip decisions are what flips() says: a function of (seed, step), new at every step.
  np.testing.assert_array_equal(flipped[:64], it.flips(0))
  np.testing.assert_array_equal(iterator(src, batch=64, image_size=4, channels=1).flips(1),
                                it.flips(1))
  assert not np.array_equal(it.flips(0), it.flips(1))
  assert not np.array_equal(it.flips(0), iterator(src, batch=64, seed=1, image_size=4,
                                                  channels=1).flips(0))
  no_flip = iterator(src, batch=64, image_size=4, channels=1, random_flip=False)
  assert (next(no_flip)[:, 0, 0, 0] == 1.0).all()


def test_in_memory_source_needing_resize():
  rng = np.random.default_rng(3)
  src = data.ArraySource(rng.integers(0, 256, (30, 20, 24, 3), np.uint8))
  with iterator(src, batch=6, seed=9, image_size=8) as it:  # Prefetching thread-pool path.
    batches = [next(it) for _ in range(7)]
    for step, b in enumerate(batches):
      assert b.shape == (6, 8, 8, 3)
      np.testing.assert_array_equal(b, it.get_batch(step))
    idx = it.example_indices(5)
    expected = np.stack([data.preprocess_image(src.images[i], 8, 3) for i in idx])
    flips = it.flips(5)
    expected[flips] = expected[flips][:, :, ::-1]
    np.testing.assert_array_equal(batches[5], data.to_float(expected))


def test_batch_not_divisible_by_processes():
  src = indexed_source(20)
  with pytest.raises(ValueError, match='not divisible'):
    iterator(src, batch=10, process_count=4)
  with pytest.raises(ValueError, match='not divisible'):
    data.create_train_iterator(data_config(dataset='folder', data_dir='/nonexistent'), 10, 0,
                             process_index=1, process_count=3)


def _labelled_source(n=30, num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  return data.ArraySource(rng.integers(0, 256, (n, 8, 8, 1), np.uint8),
                          rng.integers(0, num_classes, (n,)))


def test_labelled_batches_carry_each_example_its_own_label():
  src = _labelled_source()
  kw = dict(global_batch_size=8, seed=3, image_size=8, channels=1)
  plain = data.TrainIterator(src, **kw)
  labelled = data.TrainIterator(src, num_classes=5, **kw)
  for step in (0, 3, 7):  # Step 3 crosses an epoch boundary (30 examples, batch 8).
    batch = labelled.get_batch(step)
    assert set(batch) == {'image', 'label'} and batch['label'].dtype == np.int32
    np.testing.assert_array_equal(batch['image'], plain.get_batch(step))
    np.testing.assert_array_equal(batch['label'], src.labels[labelled.example_indices(step)])
  # next() yields the same dicts; process slices of the labels concatenate to the global ones.
  np.testing.assert_array_equal(next(iter(labelled))['label'], labelled.get_batch(0)['label'])
  halves = [data.TrainIterator(src, num_classes=5, process_index=p, process_count=2, **kw)
            .get_batch(5)['label'] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), labelled.get_batch(5)['label'])


def test_labelled_batches_of_streaming_sources_match_in_memory_ones():
  src = _labelled_source()

  class Streaming:  # Any random-access source: (image, label) per index, and class names.
    classes = src.classes

    def __len__(self):
      return len(src)

    def __getitem__(self, i):
      return src[i]

  kw = dict(global_batch_size=8, seed=3, image_size=8, channels=1, num_classes=5)
  with data.TrainIterator(Streaming(), **kw) as stream:
    a, b = next(stream), data.TrainIterator(src, **kw).get_batch(0)
  np.testing.assert_array_equal(a['label'], b['label'])
  np.testing.assert_array_equal(a['image'], b['image'])


def test_labels_missing_or_out_of_range_are_clear_errors():
  kw = dict(global_batch_size=8, seed=0, image_size=8, channels=1)
  unlabelled = data.ArraySource(np.zeros((10, 8, 8, 1), np.uint8))
  with pytest.raises(data.DatasetError, match='num_classes=0'):
    data.TrainIterator(unlabelled, num_classes=10, **kw)
  with pytest.raises(data.DatasetError, match=r'num_classes=3 but the dataset has 5 classes '
                     r'\(0, 1, 2, 3, 4\): set config.model.num_classes=5'):
    data.TrainIterator(_labelled_source(num_classes=5), num_classes=3, **kw)
  # A source whose labels exceed its own class list: the label is named.
  src = _labelled_source(num_classes=5)
  src = data.ArraySource(src.images, src.labels, classes=('a', 'b', 'c'))
  with pytest.raises(data.DatasetError, match=r'outside \[0, 3\)'):
    data.TrainIterator(src, num_classes=3, **kw).get_batch(0)


def test_fashion_mnist_train_iterator_yields_its_labels():
  cfg = default.get_config().data
  cfg.dataset, cfg.image_size, cfg.channels = 'fashion_mnist', 32, 1
  it = data.create_train_iterator(cfg, 16, seed=0, num_classes=10)
  batch = it.get_batch(0)
  _, labels = fashion_mnist.load(fashion_mnist.find_dir(), 'train')
  np.testing.assert_array_equal(batch['label'], labels[it.example_indices(0)])
  assert batch['image'].shape == (16, 32, 32, 1)


class _Recording:
  """A random-access source that records which indices were read."""

  classes = None

  def __init__(self, source):
    self.source, self.read = source, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.read.append(int(i))
    return self.source[i]


def test_each_process_reads_only_its_slice():
  src = indexed_source(40)
  one = iterator(src, batch=8, seed=4)
  for p in range(4):
    rec = _Recording(src)
    it = data.TrainIterator(rec, global_batch_size=8, seed=4, image_size=8, channels=3,
                            process_index=p, process_count=4, start_step=3, num_threads=0)
    got = [next(it) for _ in range(2)]
    expected = [one.example_indices(s)[2 * p:2 * p + 2] for s in (3, 4)]
    np.testing.assert_array_equal(sorted(rec.read), sorted(np.concatenate(expected)))
    for k, s in enumerate((3, 4)):
      np.testing.assert_array_equal(got[k], one.get_batch(s)[2 * p:2 * p + 2])


def test_epoch_order_is_seeded_and_stable():
  def epoch(it, e):  # Batches of 10 of 50 examples: epoch e is steps 5e .. 5e + 4.
    return np.concatenate([it.example_indices(s) for s in range(5 * e, 5 * e + 5)])

  a, b = iterator(indexed_source(50), batch=10, seed=7), iterator(indexed_source(50), batch=10,
                                                                  seed=7)
  np.testing.assert_array_equal(epoch(a, 3), epoch(b, 3))
  assert sorted(epoch(a, 3)) == list(range(50))
  assert not np.array_equal(epoch(a, 3), epoch(a, 2))
  assert not np.array_equal(epoch(a, 3), epoch(iterator(indexed_source(50), batch=10, seed=8), 3))


def test_worker_processes_give_the_same_batches(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(12):
    folder = tmp_path / ('cats' if i % 2 else 'dogs')
    folder.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), np.uint8)).save(folder / f'{i}.png')
  cfg = data_config(dataset='folder', data_dir=str(tmp_path), image_size=8)
  threads = data.create_train_iterator(cfg, 4, seed=1, start_step=2, num_classes=2)
  cfg.worker_processes = 2
  with data.create_train_iterator(cfg, 4, seed=1, start_step=2, num_classes=2) as workers:
    for step in range(2, 7):
      a, b = next(workers), threads.get_batch(step)
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
