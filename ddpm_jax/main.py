"""Command line: `python -m ddpm_jax.main --config=configs/cifar10.py --workdir=DIR --mode=train`.

Config fields are overridden with `--config.a.b=value` (ml_collections config_flags); unknown keys
and values of the wrong type are refused by ml_collections before anything runs.

Multi-process runs (TPU pod slices, GPU clusters, several CPU processes): start the same command
on every host with `--distributed` (or `DDPM_DISTRIBUTED=1`), or with explicit
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; see `launch/README.md`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples and logs (on storage '
                    'that every host sees when running on several hosts).')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'],
                  'Job to run: train, sample from the newest checkpoint, or evaluate every '
                  'checkpoint of the workdir as it appears (bits/dim, FID/IS/KID, FD-FMNIST).')
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
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # Orbax logs every save at INFO; keep the console readable.
    logging.set_verbosity(logging.WARNING)
  # Before any other JAX call: the distributed runtime decides which devices this process sees.
  from ddpm_jax import distributed
  distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  import jax  # Imported after flag parsing so that --help is fast.
  import os
  if FLAGS.xla_cache_dir and not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.xla_cache_dir))
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
  elif FLAGS.mode == 'eval':
    from ddpm_jax import evaluate, sharding
    from ddpm_jax.experiment import Experiment
    experiment = Experiment.from_config(FLAGS.config, mesh=sharding.make_mesh())
    evaluate.eval_job(FLAGS.config, FLAGS.workdir, experiment=experiment)
  else:
    from ddpm_jax import sampling, sharding
    from ddpm_jax.experiment import Experiment
    # Sampling replicates the parameters, whatever config.train.mesh_shape trained them.
    experiment = Experiment.from_config(FLAGS.config, mesh=sharding.make_mesh())
    sampling.sample_from_workdir(FLAGS.config, FLAGS.workdir, experiment=experiment)


if __name__ == '__main__':
  app.run(main)
