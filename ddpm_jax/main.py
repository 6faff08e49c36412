"""Command line: `python -m ddpm_jax.main --config=configs/cifar10.py --workdir=DIR --mode=train`.

`--init_from=SOURCE` starts from a diffusers model (a folder or a Hugging Face Hub id such as
google/ddpm-cifar10-32, see `ddpm_jax.interop.diffusers`): a fine-tune with --mode=train, the
model to sample or evaluate when the workdir holds no checkpoint.

Config fields are overridden with `--config.a.b=value` (ml_collections config_flags); unknown keys
and values of the wrong type are refused by ml_collections before anything runs.

Multi-process runs (TPU pod slices, GPU clusters, several CPU processes): start the same command
on every host with `--distributed` (or `DDPM_DISTRIBUTED=1`), or with explicit
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; see `launch/README.md`.
"""

from absl import flags
from ml_collections import config_flags

from ddpm_jax import cli, evaluate, runtime, sample_job, train

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples and logs (on storage '
                    'that every host sees when running on several hosts).')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'],
                  'Job to run: train, sample from the newest checkpoint, or evaluate every '
                  'checkpoint of the workdir as it appears (bits/dim, FID/IS/KID, FD-FMNIST).')
flags.DEFINE_string('init_from', None, 'A diffusers UNet2DModel or DDPMPipeline folder, or a '
                    'Hugging Face Hub id such as google/ddpm-cifar10-32: the starting point of '
                    '--mode=train (a fine-tune; a checkpoint in the workdir is resumed instead), '
                    'the model of --mode=sample and --mode=eval when the workdir holds no '
                    'checkpoint. Its config must match --config.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main():
  runtime.setup('train' if FLAGS.mode == 'train' else 'inference')
  jobs = {'train': train.train_and_evaluate, 'sample': sample_job.sample_from_workdir,
          'eval': evaluate.eval_job}
  jobs[FLAGS.mode](FLAGS.config, FLAGS.workdir, init_from=FLAGS.init_from)


def run():
  """The `ddpm-jax` console script (pyproject.toml): `python -m ddpm_jax.main` by name."""
  cli.run(main, arguments=False)


if __name__ == '__main__':
  run()
