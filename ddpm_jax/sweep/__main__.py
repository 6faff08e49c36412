r"""Command line: run an ablation sweep (`ddpm_jax.sweep.run`), one training run per member.

    python -m ddpm_jax.sweep --config=configs/cifar10.py \
        --sweep=configs/sweeps/ddpm_table2.py --workdir=runs/table2 [--config.train.num_steps=N]

The base config is `--config` with any `--config.*` overrides; `python -m ddpm_jax.sweep.report
WORKDIR` then tabulates and plots the sweep.

`--launcher` runs the members elsewhere: `print` prints one command per member (any
scheduler), `slurm` one `sbatch launch/slurm_gpu.sbatch` line per member and `tpu` one
`launch/tpu_pod.sh` line per member (each member then uses the whole pod slice or allocation).
Each printed command runs this module for one member (`--member=NAME`), so statuses, the final
evaluation and skip/resume work the same way there.
"""

import collections
import sys

from absl import flags
from ml_collections import config_flags

from ddpm_jax import cli, runtime
from ddpm_jax.sweep import run

flags.DEFINE_string('sweep', None, 'Sweep file (configs/sweeps/*.py, defining get_sweep()).')
flags.DEFINE_string('workdir', None, 'Sweep directory: one workdir per member inside it.')
flags.DEFINE_enum('launcher', 'local', ['local', 'print', 'slurm', 'tpu'],
                  'local: run the members here, one after the other; print / slurm / tpu: '
                  'print one command per member instead.')
flags.DEFINE_multi_string('member', [], 'Run only these members (names as in sweep.json, or '
                          'indices); repeatable. Default: all.')
flags.DEFINE_bool('final_eval', True, 'Evaluate each member once after training.')
config_flags.DEFINE_config_file('config', None, 'Base config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'sweep', 'workdir'])
FLAGS = flags.FLAGS


def main():
  config_path = FLAGS['config'].config_filename
  if FLAGS.launcher != 'local':
    planned = run.select(run.plan(FLAGS.config, FLAGS.sweep), FLAGS.member)
    base_args = [a for a in sys.argv if a.startswith('--config.')]  # Passed on.
    print('\n'.join(run.commands(FLAGS.launcher, [n for n, _, _ in planned], config_path,
                                 FLAGS.sweep, FLAGS.workdir, base_args)))
    return
  runtime.setup()
  statuses = run.run_sweep(FLAGS.config, FLAGS.sweep, FLAGS.workdir, FLAGS.member,
                           FLAGS.final_eval, config_path=config_path)
  counts = collections.Counter(statuses.values())
  print('[sweep] ' + ', '.join(f'{n} {s}' for s, n in counts.items())
        + f'; report: python -m ddpm_jax.sweep.report {FLAGS.workdir}', flush=True)


if __name__ == '__main__':
  cli.run(main, arguments=False)
