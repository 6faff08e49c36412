"""Input-pipeline throughput alone (images/s), to compare with the train step's need.

  python -m benchmarks.input_throughput --config=configs/fashion_mnist.py --batch=128
  python -m benchmarks.input_throughput --synthetic=50000 --image_size=32 --channels=3
"""

from __future__ import annotations

import time

from absl import app, flags

from benchmarks import common

flags.DEFINE_string('config', 'configs/fashion_mnist.py', 'Config file (its data section).')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_integer('batches', 200, 'Timed batches.')
flags.DEFINE_integer('synthetic', 0, 'If > 0: an in-memory dataset of this many random images '
                     'instead of the config\'s dataset (CIFAR-10 sizes by default).')
flags.DEFINE_integer('image_size', 32, 'Synthetic image size.')
flags.DEFINE_integer('channels', 3, 'Synthetic channels.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np
  from ddpm_jax import config_checks, input_pipeline

  if FLAGS.synthetic:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.synthetic, FLAGS.image_size, FLAGS.image_size,
                                   FLAGS.channels), dtype=np.uint8)
    it = input_pipeline.TrainIterator(
        input_pipeline.ArraySource(images), global_batch_size=FLAGS.batch, seed=0,
        image_size=FLAGS.image_size, channels=FLAGS.channels)
    what = f'synthetic {FLAGS.synthetic}x{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}'
  else:
    config = common.load_config(FLAGS.config)
    config_checks.validate(config)
    t0 = time.perf_counter()
    it = input_pipeline.create_train_iterator(config.data, FLAGS.batch, seed=0)
    next(it)
    what = f'{config.data.dataset} (first batch after {time.perf_counter() - t0:.2f} s)'
  t0 = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(it)
  dt = time.perf_counter() - t0
  print(f'input_throughput {what} batch={FLAGS.batch} | '
        f'{FLAGS.batches * FLAGS.batch / dt:,.0f} images/s over {FLAGS.batches} batches, '
        f'peak host mem {common.peak_host_memory_gib():.2f} GiB', flush=True)


if __name__ == '__main__':
  app.run(main)
