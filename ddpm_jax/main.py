"""Command line: `python -m ddpm_jax.main --config=configs/cifar10.py --workdir=DIR --mode=train`.

Config fields are overridden with `--config.a.b=value` (ml_collections config_flags); unknown keys
and values of the wrong type are refused by ml_collections before anything runs.

Multi-process runs (TPU pod slices, GPU clusters, several CPU processes): start the same command
on every host with `--distributed` (or `DDPM_DISTRIBUTED=1`), or with explicit
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; see `launch/README.md`.
"""

from absl import app, flags
from ml_collections import config_flags

from ddpm_jax import cli, runtime

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples and logs (on storage '
                    'that every host sees when running on several hosts).')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'],
                  'Job to run: train, sample from the newest checkpoint, or evaluate every '
                  'checkpoint of the workdir as it appears (bits/dim, FID/IS/KID, FD-FMNIST).')
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  runtime.setup('train' if FLAGS.mode == 'train' else 'inference')

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
  cli.run(main)
