"""Training batches on grain: a pure function of (seed, step), sharded by process, prefetched.

The global stream of examples is grain's `MapDataset.range(N).shuffle(seed).repeat()`: epoch
`e` visits the dataset in the order of a permutation seeded by (seed, e). Global batch `step`
is positions [step * B, (step + 1) * B) of the stream (`batch(B)`); `random_map` draws the
left-right flips of its B positions from (seed, step), a fair coin per example; process p of P
takes the contiguous slice [p * B / P, (p + 1) * B / P) of both and reads, preprocesses and
flips only those examples. Every transform is keyed by the step, so

* a run resumed at `start_step` sees exactly the batches of an uninterrupted run;
* the processes' local batches put together are the one-process global batch, flips included;
* a process reads (decodes, resizes) only its own examples.

In-memory sources that need no resizing are preprocessed once as a whole and batched by fancy
indexing; other sources are read ahead by threads or worker processes (`TrainIterator`).
"""

from __future__ import annotations

import functools
import os

import grain
import numpy as np
from absl import flags

from ddpm_jax.data.preprocess import needs_resize, preprocess_image, preprocess_images, to_float
from ddpm_jax.data.sources import ArraySource, open_source
from ddpm_jax.errors import DatasetError

# Streams of the per-run seed.
_SHUFFLE_STREAM = 0
_FLIP_STREAM = 1

_NO_LABELS = ('config.model.num_classes > 0 (a class-conditional model) needs a dataset with '
              'labels, and this one has none (an image folder without class subfolders, '
              'celeb_a_hq, lsun): set config.model.num_classes=0.')


def _grain_seed(seed: int, stream: int) -> int:
  """A 32-bit grain seed for one stream of the run's seed."""
  return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


def check_labels(source, num_classes: int) -> None:
  """Raises DatasetError unless `source` suits a model with `num_classes` classes (0: an
  unconditional model, which suits any source): it must have labels, and as many classes as
  `config.model.num_classes` says."""
  if not num_classes:
    return
  classes = getattr(source, 'classes', None)
  if classes is None:
    raise DatasetError(_NO_LABELS)
  if len(classes) != num_classes:
    shown = ', '.join(classes[:20]) + (', ...' if len(classes) > 20 else '')
    raise DatasetError(f'config.model.num_classes={num_classes} but the dataset has '
                       f'{len(classes)} classes ({shown}): set '
                       f'config.model.num_classes={len(classes)}.')


def _check_sharding(global_batch_size: int, process_index: int, process_count: int) -> None:
  if int(global_batch_size) < 1:
    raise ValueError(f'global_batch_size must be positive, got {global_batch_size}.')
  if int(process_count) < 1 or not 0 <= int(process_index) < int(process_count):
    raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
  if global_batch_size % process_count:
    raise ValueError(f'The global batch size {global_batch_size} is not divisible by the '
                     f'process count {process_count}; use a multiple of {process_count}.')


def _plan(random_flip: bool, offset: int, size: int, indices, rng: np.random.Generator):
  """grain `random_map` over global batches: dataset indices (B,) -> this process's slice
  [offset, offset + size) of (indices, flips), a fair coin per position of the global batch
  from the step's RNG (all False without flips)."""
  flips = (rng.random(len(indices)) < 0.5) & random_flip
  return np.asarray(indices, np.int64)[offset:offset + size], flips[offset:offset + size]


def _read_batch(source, image_size: int, channels: int, num_classes: int, preprocessed: bool,
                plan):
  """grain `map`: (indices, flips) -> uint8 (n, S, S, C), the examples read, preprocessed and
  flipped, and with `num_classes > 0` a dict with their int32 labels, checked to lie in
  [0, num_classes). In-memory sources already preprocessed are read by one fancy index."""
  indices, flips = plan
  if preprocessed:
    images = source.images[indices]
    labels = source.labels[indices] if num_classes else None
  else:
    examples = [source[i] for i in indices]
    images = np.stack([preprocess_image(im, image_size, channels) for im, _ in examples])
    labels = [label for _, label in examples]
  if flips.any():
    images[flips] = images[flips][:, :, ::-1]
  if not num_classes:
    return images
  labels = np.asarray(labels, np.int64)
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    raise DatasetError(f'Label {int(labels[bad][0])} is outside [0, {num_classes}): set '
                       'config.model.num_classes to the number of classes of the dataset.')
  return {'image': images, 'label': labels.astype(np.int32)}


def _model_input(batch):
  """grain `map`: a uint8 batch (or {'image', 'label'}) -> float32 in [-1, 1]."""
  if isinstance(batch, dict):
    return {'image': to_float(batch['image']), 'label': batch['label']}
  return to_float(batch)


class TrainIterator:
  """Infinite iterator of this process's batches: float32 (B / P, S, S, C) in [-1, 1], or with
  `num_classes > 0` dicts {'image': that, 'label': int32 (B / P,)}.

  `next()` yields the batches of steps start_step, start_step + 1, ...; `get_batch(step)`
  computes any step's batch directly (the array `next()` gives for that step).
  `num_threads` threads prepare batches ahead in this process (default: one for an in-memory
  source, else one per core up to 8); with `worker_processes > 0` that many processes prepare
  them instead, each with `num_threads` threads.
  """

  def __init__(self, source, *, global_batch_size: int, seed: int, image_size: int,
               channels: int, random_flip: bool = True, start_step: int = 0,
               process_index: int = 0, process_count: int = 1, num_classes: int = 0,
               num_threads: int | None = None, worker_processes: int = 0):
    _check_sharding(global_batch_size, process_index, process_count)
    if int(start_step) < 0:
      raise ValueError(f'start_step must be >= 0, got {start_step}.')
    if len(source) == 0:
      raise DatasetError('The dataset is empty.')
    check_labels(source, int(num_classes))
    local_batch_size = int(global_batch_size) // int(process_count)
    self.step = int(start_step)  # The step whose batch `next()` returns next.
    in_memory = isinstance(source, ArraySource) and not needs_resize(
        *source.images.shape[1:3], int(image_size))
    if in_memory:  # Preprocessed once; batches are fancy-indexed.
      source = source.preprocessed(int(image_size), int(channels))
    order = grain.MapDataset.range(len(source)).shuffle(
        seed=_grain_seed(seed, _SHUFFLE_STREAM)).repeat()
    self._plan = order.batch(int(global_batch_size)).random_map(
        functools.partial(_plan, bool(random_flip), int(process_index) * local_batch_size,
                          local_batch_size),
        seed=_grain_seed(seed, _FLIP_STREAM))
    self._uint8 = self._plan.map(functools.partial(
        _read_batch, source, int(image_size), int(channels), int(num_classes), in_memory))
    self._batches = self._uint8.map(_model_input)
    if num_threads is None:
      num_threads = 1 if in_memory else min(8, os.cpu_count() or 1)
    self._num_threads, self._worker_processes = int(num_threads), int(worker_processes)
    self._iter = None

  def example_indices(self, step: int) -> np.ndarray:
    """Dataset indices of this process's examples in batch `step`."""
    return self._plan[int(step)][0]

  def flips(self, step: int) -> np.ndarray:
    """bool (B / P,): which of this process's examples in batch `step` are flipped."""
    return self._plan[int(step)][1]

  def get_batch(self, step: int):
    """This process's batch `step` (see the class docstring)."""
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}.')
    return self._batches[int(step)]

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self):
    if self._iter is None:
      threads = self._num_threads
      options = grain.ReadOptions(num_threads=threads,
                                  prefetch_buffer_size=2 * threads if threads else 1)
      if self._worker_processes > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (defaults here).
          flags.FLAGS.mark_as_parsed()
        # Workers send uint8 batches (a quarter of float32's bytes); floats are made here.
        ds = self._uint8[self.step:].to_iter_dataset(options).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=self._worker_processes,
                                         per_worker_buffer_size=2)).map(_model_input)
      else:
        ds = self._batches[self.step:].to_iter_dataset(options)
      self._iter = iter(ds)
    batch = next(self._iter)
    self.step += 1
    return batch

  def close(self) -> None:
    """Stops the prefetch threads and worker processes."""
    if self._iter is not None:
      self._iter.close()
      self._iter = None

  def __enter__(self) -> 'TrainIterator':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def create_train_iterator(data_config, global_batch_size: int, seed: int, start_step: int = 0,
                          process_index: int = 0, process_count: int = 1,
                          num_classes: int = 0, source=None) -> TrainIterator:
  """This process's infinite stream of training batches of `config.data.split` from step
  `start_step` on (see `TrainIterator`). `source`: that split already opened
  (`open_source`), e.g. to check the data before anything else."""
  _check_sharding(global_batch_size, process_index, process_count)
  if source is None:
    source = open_source(data_config)
  return TrainIterator(
      source, global_batch_size=global_batch_size, seed=seed,
      image_size=data_config.image_size, channels=data_config.channels,
      random_flip=data_config.random_flip, start_step=start_step,
      process_index=process_index, process_count=process_count, num_classes=num_classes,
      worker_processes=data_config.worker_processes)


def load_split(data_config, split: str, max_examples: int | None = None) -> np.ndarray:
  """The first `max_examples` (all if None) images of `split` in dataset order, preprocessed
  (channels, crop, resize / pad; no flip): uint8 (N, S, S, C)."""
  image_size, channels = data_config.image_size, data_config.channels
  source = open_source(data_config, split)
  n = len(source) if max_examples is None else max(0, min(int(max_examples), len(source)))
  if isinstance(source, ArraySource):
    return np.array(preprocess_images(source.images[:n], image_size, channels))
  out = np.empty((n, image_size, image_size, channels), np.uint8)
  images = grain.MapDataset.source(source)[:n].map(
      lambda example: preprocess_image(example[0], image_size, channels))
  threads = min(8, os.cpu_count() or 1)
  for i, image in enumerate(images.to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads))):
    out[i] = image
  return out
