"""Input-pipeline throughput alone (images/s), to compare with the train step's need.

  python -m benchmarks.input_throughput --config=configs/fashion_mnist.py --batch=128
  python -m benchmarks.input_throughput --synthetic=50000 --image_size=32 --channels=3
  python -m benchmarks.input_throughput --dataset=folder --data_dir=DIR --image_size=256 \
      --batch=64 [--worker_processes=2]

The first batch (start-up: listing files, opening the dataset, starting threads or processes)
is reported separately and not timed with the others.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from benchmarks import common
from ddpm_jax import data

flags.DEFINE_string('config', 'configs/default.py', 'Config file (its data section).')
flags.DEFINE_string('dataset', '', "Overrides config.data.dataset, e.g. 'folder'.")
flags.DEFINE_string('data_dir', None, 'Overrides config.data.data_dir (a folder of images for '
                    '--dataset=folder).')
flags.DEFINE_integer('image_size', None, 'Overrides config.data.image_size (and sets the '
                     'synthetic images\' size, default 32).')
flags.DEFINE_integer('channels', None, 'Overrides config.data.channels (synthetic: default 3).')
flags.DEFINE_integer('worker_processes', None, 'Overrides config.data.worker_processes.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_integer('batches', 200, 'Timed batches.')
flags.DEFINE_integer('synthetic', 0, 'If > 0: an in-memory dataset of this many random images '
                     'instead of the config\'s dataset (CIFAR-10 sizes by default).')
FLAGS = flags.FLAGS


def _iterator():
  """(the train iterator, what it reads)."""
  if FLAGS.synthetic:
    size, channels = FLAGS.image_size or 32, FLAGS.channels or 3
    images = np.random.default_rng(0).integers(0, 256, (FLAGS.synthetic, size, size, channels),
                                               dtype=np.uint8)
    it = data.TrainIterator(data.ArraySource(images), global_batch_size=FLAGS.batch, seed=0,
                            image_size=size, channels=channels)
    return it, f'synthetic {FLAGS.synthetic}x{size}x{size}x{channels}'
  overrides = {'data.dataset': FLAGS.dataset, 'data.data_dir': FLAGS.data_dir,
               'data.image_size': FLAGS.image_size, 'data.channels': FLAGS.channels,
               'data.worker_processes': FLAGS.worker_processes}
  config = common.load_config(FLAGS.config, {k: v for k, v in overrides.items()
                                             if v is not None and v != ''})
  d = config.data
  data.resolve_dataset(d.dataset, d.image_size)  # Only the data section matters here.
  it = data.create_train_iterator(d, FLAGS.batch, seed=0)
  return it, (f'{d.dataset} {d.image_size}x{d.image_size}x{d.channels} '
              f'worker_processes={d.worker_processes}')


def main(argv):
  del argv
  t0 = time.perf_counter()
  it, what = _iterator()
  with it:
    next(it)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(FLAGS.batches):
      next(it)
    dt = time.perf_counter() - t0
  print(f'input_throughput {what} batch={FLAGS.batch} | '
        f'{FLAGS.batches * FLAGS.batch / dt:,.0f} images/s over {FLAGS.batches} batches '
        f'(first batch after {first:.2f} s), peak host mem '
        f'{common.peak_host_memory_gib():.2f} GiB', flush=True)


if __name__ == '__main__':
  app.run(main)
