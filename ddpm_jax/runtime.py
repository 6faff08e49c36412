"""Process start-up shared by the command lines (`ddpm_jax.main`, `ddpm_jax.sweep`): the flags
for the distributed runtime and the XLA cache, and `setup()`, which must run before any other
JAX call."""

import os

import jax
from absl import flags, logging

from ddpm_jax import distributed, xla_flags

flags.DEFINE_string('xla_cache_dir', '~/.cache/ddpm_jax/xla',
                    'Persistent XLA compilation cache (restarts and resumed runs skip '
                    'compilation); empty to disable. JAX_COMPILATION_CACHE_DIR takes precedence.')
flags.DEFINE_bool('distributed', False,
                  'Start jax.distributed (coordinator, process count and id auto-detected on '
                  'Cloud TPU pods, SLURM, Open MPI, ...). Also on with DDPM_DISTRIBUTED=1.')
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0, for a multi-process run without a cluster manager '
                    '(implies --distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (with '
                     '--coordinator_address).')
flags.DEFINE_enum('cpu_preset', 'auto', ['auto', 'train', 'inference', 'none'],
                  'XLA:CPU compilation settings (ddpm_jax/xla_flags.py): auto = train for '
                  'training, inference for sampling and evaluation; none = XLA defaults.')
FLAGS = flags.FLAGS


def setup(job: str = 'train') -> None:
  """Quiet logging unless --verbosity was given, the XLA:CPU preset for `job` (train |
  inference), jax.distributed when asked for, the persistent XLA cache, and TensorFlow (if
  installed for tfds) kept off the accelerators. Importing JAX creates no backend: the XLA
  flags and the distributed runtime take effect because nothing has run on a device yet."""
  xla_flags.apply_cpu_preset(job if FLAGS.cpu_preset == 'auto' else FLAGS.cpu_preset)
  if not FLAGS['verbosity'].present:  # Orbax logs every save at INFO; keep the console readable.
    logging.set_verbosity(logging.WARNING)
  # Before any other JAX call: the distributed runtime decides which devices this process sees.
  distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  if FLAGS.xla_cache_dir and not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.xla_cache_dir))
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (optional, heavy: tfds only)
    tf.config.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  logging.info('JAX %s, process %d/%d, devices: %s', jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())
