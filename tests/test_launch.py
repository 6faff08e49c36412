"""The launchers refuse malformed calls with their usage, before starting anything."""

import os
import subprocess

import pytest

from conftest import ROOT

CONFIG = 'configs/fashion_mnist.py'


def _launch(script, *args):
  return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize('script,args,expect', [
    # The call: flags where the device count, CONFIG and WORKDIR belong.
    ('multiprocess_local.sh', ['2', f'--config={CONFIG}', '--workdir=D', 'train.num_steps=5'],
     f"DEVICES_PER_PROCESS must be a positive integer, got '--config={CONFIG}'"),
    ('multiprocess_local.sh', ['2', f'--config={CONFIG}', '--workdir=D'],
     'expected NUM_PROCESSES, DEVICES_PER_PROCESS, CONFIG and WORKDIR'),
    ('multiprocess_local.sh', ['0', '1', CONFIG, 'D'], 'NUM_PROCESSES must be a positive'),
    ('multiprocess_local.sh', ['2', '1', 'nope.py', 'D'], "config file not found: 'nope.py'"),
    ('multiprocess_local.sh', ['2', '1', CONFIG, '--workdir=D'],
     "WORKDIR must be a directory path, got '--workdir=D'"),
    ('local.sh', [f'--config={CONFIG}', '--workdir=D'], 'CONFIG must be a config file'),
    ('local.sh', [CONFIG], 'expected CONFIG and WORKDIR'),
    ('local.sh', [CONFIG, 'train.batch_size=8'], 'WORKDIR must be a directory path'),
    ('tpu_pod.sh', ['train', f'--config={CONFIG}', 'D'], 'CONFIG must be a config file'),
    ('slurm_gpu.sbatch', [f'--config={CONFIG}', 'D'], 'CONFIG must be a config file'),
])
def test_malformed_calls_print_the_usage(script, args, expect, tmp_path):
  out = _launch(script, *args)
  assert out.returncode == 2, out.stderr
  assert expect in out.stderr and 'usage: ' in out.stderr
  assert 'Traceback' not in out.stderr and not os.path.exists(os.path.join(ROOT, 'D'))


@pytest.mark.parametrize('script', ['local.sh', 'multiprocess_local.sh'])
def test_help_prints_the_usage(script):
  out = _launch(script, '--help')
  assert out.returncode == 0 and out.stdout.startswith(f'usage: bash launch/{script} ')


def test_a_workdir_path_with_an_equals_sign_is_a_workdir(tmp_path):
  """runs/lr=2e-4 is a path, not a config override: the launcher starts the program (here with
  `--helpshort`, which prints the flags and exits)."""
  out = _launch('local.sh', CONFIG, str(tmp_path / 'lr=2e-4'), '--helpshort')
  assert 'WORKDIR must be' not in out.stderr and '--workdir: Directory' in out.stdout
