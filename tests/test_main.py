"""The command line, run as a user runs it: train, resume, sample, and bad input."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from configs import fashion_mnist
from conftest import ROOT

TINY = [
    '--config.data.image_size=8', '--config.model.ch=8', '--config.model.ch_mult=(1,2)',
    '--config.model.num_res_blocks=1', '--config.model.attn_resolutions=(4,)',
    '--config.model.num_groups=4', '--config.diffusion.num_timesteps=20',
    '--config.train.batch_size=4', '--config.train.log_every=1',
    '--config.train.checkpoint_every=2', '--config.train.sample_every=0',
    '--config.sample.num=6', '--config.sample.batch_size=4', '--config.sample.steps=0',
]


def tiny_quickstart_config():
  """The config that configs/fashion_mnist.py with the TINY flags builds (the model, the
  diffusion and the sampler's steps), to write a checkpoint without training."""
  c = fashion_mnist.get_config()
  c.data.image_size, c.model.ch, c.model.ch_mult = 8, 8, (1, 2)
  c.model.update(num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
  c.diffusion.num_timesteps = 20
  c.sample.steps = 0  # The quickstart's 250 respaced steps exceed these 20.
  return c


def _run(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'ddpm_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_train_resume_and_sample_from_the_command_line(tmp_path):
  cfg = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
  work = str(tmp_path / 'run')
  out = _run(f'--config={cfg}', f'--workdir={work}', '--config.train.num_steps=2', *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Model: 44,969 parameters' in out.stdout
  out = _run(f'--config={cfg}', f'--workdir={work}', '--config.train.num_steps=3', *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resuming from step 2' in out.stdout
  out = _run(f'--config={cfg}', f'--workdir={work}', '--mode=sample', *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  npz = np.load(os.path.join(work, 'samples', 'sample_step00000003_n6.npz'))
  assert npz['arr_0'].shape == (6, 8, 8, 1) and npz['arr_0'].dtype == np.uint8
  grid = np.asarray(Image.open(os.path.join(work, 'samples', 'sample_step00000003_n6.png')))
  assert grid.shape == (8 * (2 + 2 * 10), 8 * (2 + 3 * 10))  # Upscaled 8x (image_files.upscale).
  out = _run(f'--config={cfg}', f'--workdir={work}', '--mode=eval', *TINY,
             '--config.train.num_steps=3', '--config.evals.bpd.num_examples=4',
             '--config.evals.bpd.batch_size=4', '--config.eval.timeout_seconds=0')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'protocol: EMA params' in out.stdout
  rows = open(os.path.join(work, 'eval_results.csv')).read().splitlines()
  assert rows[0].startswith('step,bpd,') and [r.split(',')[0] for r in rows[1:]] == ['2', '3']


def test_bad_config_key_value_and_missing_checkpoint_are_clear_errors(tmp_path):
  cfg = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
  out = _run(f'--config={cfg}', f'--workdir={tmp_path}', '--config.train.batchsize=4')
  assert out.returncode != 0 and 'batchsize' in out.stderr
  out = _run(f'--config={cfg}', f'--workdir={tmp_path}', '--config.diffusion.schedule=sigmoid')
  assert out.returncode != 0
  assert 'config.diffusion.schedule' in out.stderr and 'cosine' in out.stderr
  out = _run(f'--config={cfg}', f'--workdir={tmp_path}', '--config.train.batch_size=abc')
  assert out.returncode != 0 and 'batch_size' in out.stderr
  out = _run(f'--config={cfg}', f'--workdir={tmp_path / "empty"}', '--mode=sample')
  assert out.returncode != 0 and 'No checkpoint' in out.stderr
