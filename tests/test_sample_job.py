"""`--mode=sample` with every sampler and mode: grids, progressive generation (Fig. 6),
interpolation (Fig. 8), DDIM reconstruction, with classifier-free guidance."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from conftest import ROOT, make_tiny_config
from ddpm_jax import sample_job
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment


def _small_config(tmp_path, **sample):
  """A small conditional model (fewer ops than the tiny config: fast compiles), T = 20, and a
  folder of 8x8 test images."""
  c = make_tiny_config()
  c.model.update(ch_mult=(1,), attn_resolutions=(), num_classes=2)
  c.diffusion.num_timesteps = 20
  c.data.update(dataset='folder', data_dir=str(tmp_path / 'images'))
  c.sample.update(num=4, batch_size=4, guidance_scale=1.5, **sample)
  return c


def _checkpoint(config, workdir, seed=0):
  exp = Experiment.from_config(config)
  state = exp.init_state()
  # Non-zero output layer so that the samples depend on the network.
  params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.PRNGKey(seed),
                                                                p.shape), state.params)
  state = state.replace(params=params, ema_params=params)
  ckpt = Checkpointer(str(workdir), async_save=False)
  ckpt.save(0, state)
  ckpt.wait()
  ckpt.close()
  return exp


def test_every_sample_mode_writes_its_files(tmp_path):
  folder = tmp_path / 'images' / 'test'
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(8):
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f'{i}.png')
  work = tmp_path / 'run'
  c = _small_config(tmp_path)
  exp = _checkpoint(c, work)

  c.sample.update(mode='grid', sampler='ddim', steps=5, eta=0.5)
  paths = sample_job.sample_from_workdir(c, str(work), exp)
  assert paths['npz'].endswith('sample_step00000000_n4_ddim5_eta0.5_label-1_w1.5.npz')
  npz = np.load(paths['npz'])  # The improved-diffusion / ADM evaluator's layout.
  x = npz['arr_0']
  assert x.shape == (4, 8, 8, 1) and x.dtype == np.uint8 and x.std() > 0
  np.testing.assert_array_equal(npz['arr_1'], [0, 1, 0, 1])  # label -1: the classes in turn.

  c.sample.update(mode='progressive', sampler='ancestral', steps=10, progressive_frames=4)
  paths = sample_job.sample_from_workdir(c, str(work), exp)
  grid = np.asarray(Image.open(paths['pred_x0_png']))
  assert grid.shape == (2 + 4 * 10, 2 + 5 * 10)  # 4 samples x (4 steps + the final sample).
  with Image.open(paths['gif']) as gif:
    assert gif.n_frames == 5
  assert os.path.exists(paths['xt_png'])

  c.sample.update(mode='interpolate', sampler='ddim', steps=0, interp_t=12, interp_lambdas=3,
                  num=2)
  paths = sample_job.sample_from_workdir(c, str(work), exp)
  grid = np.asarray(Image.open(paths['png']))
  assert grid.shape == (2 + 2 * 10, 2 + 5 * 10)  # 2 pairs x (x_a, 3 lambdas, x_b).

  # A zero-eps model makes DDIM inversion exact: a check of the encoder/decoder plumbing.
  zero = exp.abstract_state()
  zero_state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
  ckpt = Checkpointer(str(tmp_path / 'zero'), async_save=False)
  ckpt.save(0, zero_state)
  ckpt.wait()
  ckpt.close()
  c.sample.update(mode='reconstruct', sampler='ddim', steps=7, num=3)
  paths = sample_job.sample_from_workdir(c, str(tmp_path / 'zero'), exp)
  assert paths['mse'] < 1e-9
  assert np.asarray(Image.open(paths['png'])).shape == (2 + 3 * 10, 2 + 3 * 10)


def test_ddim_sampling_from_the_command_line(tmp_path):
  from test_main import TINY, tiny_quickstart_config  # pylint: disable=g-import-not-at-top
  cfg = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
  flags = [f'--config={cfg}', f'--workdir={tmp_path}', *TINY]
  # The config those flags build, to write a checkpoint without training.
  c = tiny_quickstart_config()
  _checkpoint(c, tmp_path)
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run(
      [sys.executable, '-m', 'ddpm_jax.main', *flags, '--mode=sample',
       '--config.sample.sampler=ddim', '--config.sample.steps=5', '--config.sample.eta=0',
       '--config.sample.num=3'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600, stdin=subprocess.DEVNULL)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'ddim eta=0.0, 5 of 20 steps' in out.stdout
  npz = np.load(tmp_path / 'samples' / 'sample_step00000000_n3_ddim5_eta0.0.npz')
  assert npz['arr_0'].shape == (3, 8, 8, 1) and 'arr_1' not in npz.files  # Unconditional.


def test_sampling_leaves_the_trainers_save_in_flight_alone(tmp_path):
  """`--mode=sample` next to a running trainer: it must open the checkpoints read-only, or
  orbax's start-up clean-up deletes the trainer's save in flight (which then dies with
  NOT_FOUND on `N.orbax-checkpoint-tmp`)."""
  config = make_tiny_config()
  exp = _checkpoint(config, tmp_path)
  in_flight = tmp_path / 'checkpoints' / '7.orbax-checkpoint-tmp-1234567'
  (in_flight / 'state').mkdir(parents=True)
  params, step = sample_job._restore_params(config, str(tmp_path), exp)
  assert step == 0 and jax.tree.leaves(params)
  assert in_flight.is_dir()
