"""Command line: `python -m ddpm_jax.main --config=configs/cifar10.py --workdir=DIR --mode=train`.

Config fields are overridden with `--config.a.b=value` (ml_collections config_flags); unknown keys
and values of the wrong type are refused by ml_collections before anything runs.
"""

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples and logs.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample'], 'Job to run.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # Orbax logs every save at INFO; keep the console readable.
    logging.set_verbosity(logging.WARNING)
  import jax  # Imported after flag parsing so that --help is fast.
  # Keep TensorFlow, if installed for tfds, off the accelerators.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('JAX %s, process %d/%d, devices: %s', jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())

  if FLAGS.mode == 'train':
    from ddpm_jax import train
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    from ddpm_jax import sampling
    sampling.sample_from_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
