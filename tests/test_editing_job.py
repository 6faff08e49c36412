"""The editing modes (`--config.sample.mode=inpaint|colorize|edit`): masks, inputs, bad input
as one clear line, and each mode from the command line on the Fashion-MNIST quickstart model."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_tiny_config
from configs import fashion_mnist
from ddpm_jax import config_checks, editing_inputs, editing_job, sample_job
from test_main import TINY, tiny_quickstart_config
from test_sample_job import _checkpoint


def test_builtin_masks():
  c = editing_inputs.builtin_masks('center', 32, 2)
  assert c.shape == (2, 32, 32, 1) and c.sum() == 2 * (32 * 32 - 16 * 16)
  assert c[0, 8:24, 8:24].max() == 0 and c[0, :8].min() == 1
  left = editing_inputs.builtin_masks('left', 8, 1)[0, :, :, 0]
  np.testing.assert_array_equal(left, np.tile([0] * 4 + [1] * 4, (8, 1)))
  s = editing_inputs.builtin_masks('strokes', 32, 3, seed=1)
  assert set(np.unique(s)) == {0.0, 1.0}
  assert all(0.05 < 1 - m.mean() < 0.8 for m in s)  # Strokes cover part of each image.
  assert not np.array_equal(s[0], s[1])
  np.testing.assert_array_equal(s, editing_inputs.builtin_masks('strokes', 32, 3, seed=1))


def _png(path, array):
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
  return str(path)


def test_mask_files_and_their_errors(tmp_path):
  folder = tmp_path / 'masks'
  folder.mkdir()
  _png(folder / 'a.png', np.full((8, 8), 255))
  _png(folder / 'b.png', np.tile([0, 255], (8, 4)))
  m = editing_inputs.load_masks(str(folder), 8, 3)
  assert m.shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(m[:, 0, :2, 0], [[1, 1], [0, 1], [1, 1]])  # a, b, a again.
  one = editing_inputs.load_masks(_png(tmp_path / 'one.png', np.zeros((8, 8))), 8, 2)
  assert one.shape == (2, 8, 8, 1) and one.max() == 0
  with pytest.raises(editing_inputs.InputError, match=r'big.png is 16x8 but the images are 8x8'):
    editing_inputs.load_masks(_png(tmp_path / 'big.png', np.zeros((8, 16))), 8, 1)
  with pytest.raises(editing_inputs.InputError, match=r'grey.png is not binary: it has 3 grey '
                                                      r'levels \(0, 128, 255\)'):
    editing_inputs.load_masks(_png(tmp_path / 'grey.png', np.tile([0, 128, 255, 0], (8, 2))), 8, 1)
  with pytest.raises(editing_inputs.InputError, match='neither a built-in shape'):
    editing_inputs.load_masks(str(tmp_path / 'missing'), 8, 1)


def test_grey_image_for_a_colour_model(tmp_path):
  path = _png(tmp_path / 'g.png', np.full((12, 10), 77))
  with pytest.raises(editing_inputs.InputError,
                     match='g.png is grayscale but the model generates colour images'):
    editing_inputs.read_image(path, 8, 3, allow_grey=False)
  x = editing_inputs.read_image(path, 8, 3, allow_grey=True)  # Colorization's input.
  assert x.shape == (8, 8, 3) and (x == 77).all()
  assert editing_inputs.read_image(path, 8, 1, allow_grey=False).shape == (8, 8, 1)


def test_16_bit_images_and_masks_are_scaled_not_clipped(tmp_path):
  # PIL's convert('L') clips 16-bit values to 255: a 16-bit input would come out white.
  deep = tmp_path / 'deep.png'
  Image.fromarray(np.full((8, 8), 257 * 77, np.uint16)).save(deep)
  x = editing_inputs.read_image(str(deep), 8, 3, allow_grey=True)
  assert x.shape == (8, 8, 3) and (x == 77).all()
  mask = tmp_path / 'mask16.png'
  Image.fromarray(np.tile(np.array([0, 65535], np.uint16), (8, 4))).save(mask)
  m = editing_inputs.load_masks(str(mask), 8, 1)
  np.testing.assert_array_equal(m[0, 0, :4, 0], [0, 1, 0, 1])


def test_config_checks_of_the_editing_fields():
  c = fashion_mnist.get_config()
  c.sample.mode = 'edit'
  for t0 in (0, 1001):
    c.sample.t0 = t0
    with pytest.raises(ValueError, match=r'config.sample.t0=.* expected a step in \[1, '):
      config_checks.validate(c)
  c.sample.t0 = 1000
  config_checks.validate(c)
  c.sample.mode = 'colorize'
  with pytest.raises(ValueError, match='a colour model'):
    config_checks.validate(c)
  c.sample.mode, c.sample.resample = 'inpaint', 0
  with pytest.raises(ValueError, match='config.sample.resample'):
    config_checks.validate(c)


def test_triplet_grid_layout():
  cols = np.zeros((3, 5, 4, 6, 1), np.uint8)
  grid = editing_job.triplet_grid(cols)  # 5 items, 2 per row: 3 rows.
  assert grid.shape == (6 + 3 * (4 + 6), 6 + 2 * (3 * 6 + 2 + 6), 1)


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'ddpm_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_every_editing_mode_from_the_command_line(tmp_path):
  # The quickstart config at the size of test_main's TINY flags, a checkpoint written without
  # training, and respaced chains of a few steps; inputs from the Fashion-MNIST test split.
  c = tiny_quickstart_config()
  _checkpoint(c, tmp_path)
  base = [f'--config={os.path.join(ROOT, "configs", "fashion_mnist.py")}',
          f'--workdir={tmp_path}', *TINY, '--mode=sample', '--config.sample.steps=5']
  samples = tmp_path / 'samples'

  out = _run(*base, '--config.sample.mode=inpaint', '--config.sample.mask=strokes',
             '--config.sample.resample=2', '--config.sample.jump_length=2')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'known pixels changed by at most 0/255' in out.stdout
  npz = np.load(samples / 'inpaint_step00000000_n6_ancestral5_strokes_resample2_jump2.npz')
  x, inputs, masks = npz['arr_0'], npz['inputs'], npz['masks']
  assert x.shape == inputs.shape == (6, 8, 8, 1) and x.dtype == np.uint8
  keep = masks.astype(bool)
  np.testing.assert_array_equal(x[keep], inputs[keep])
  assert 0 < keep.mean() < 1 and np.abs(x[~keep].astype(int) - inputs[~keep]).mean() > 5
  grid = np.asarray(Image.open(samples / 'inpaint_step00000000_n6_ancestral5_strokes_resample2_'
                                         'jump2.png'))
  assert grid.shape == (6 + 3 * (8 + 6), 6 + 2 * (26 + 6))  # 6 triplets, 2 per row.

  out = _run(*base, '--config.sample.mode=edit', '--config.sample.t0=12',
             '--config.sample.sampler=ddim')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 't0 = 12 (chain starts at t = 11)' in out.stdout  # Kept steps 0, 5, 10, 14, 19.
  npz = np.load(samples / 'edit_step00000000_n6_ddim5_eta0.0_t012.npz')
  assert npz['arr_0'].shape == (6, 8, 8, 1) and int(npz['t0']) == 12

  # Bad input: one clear line each, no traceback.
  _png(tmp_path / 'mask.png', np.zeros((16, 16)))
  out = _run(*base, '--config.sample.mode=inpaint', f'--config.sample.mask={tmp_path}/mask.png')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: Mask {tmp_path}/mask.png is 16x16 but the images are 8x8 '
      '(config.data.image_size): a mask must have the size of the images.')
  out = _run(*base, '--config.sample.mode=colorize')
  assert out.returncode != 0
  assert "config.sample.mode='colorize' is invalid: expected a colour model" in out.stderr


def test_colorize_and_grey_inputs_on_a_colour_model(tmp_path):
  folder = tmp_path / 'in'
  folder.mkdir()
  rng = np.random.default_rng(0)
  _png(folder / '0.png', rng.integers(0, 256, (8, 8, 3)))
  _png(folder / '1.png', rng.integers(0, 256, (8, 8)))  # Grey: fine for colorization.
  c = make_tiny_config(channels=3)
  c.model.update(ch_mult=(1,), attn_resolutions=())
  c.diffusion.num_timesteps = 20
  c.sample.update(mode='colorize', input_dir=str(folder), num=5, steps=4, resample=2,
                  jump_length=1)
  exp = _checkpoint(c, tmp_path / 'run')
  paths = sample_job.sample_from_workdir(c, str(tmp_path / 'run'), exp)
  npz = np.load(paths['npz'])
  x, inputs = npz['arr_0'].astype(float), npz['inputs'].astype(float)
  assert x.shape == inputs.shape == (2, 8, 8, 3)  # The folder holds 2 of the 5 asked for.
  assert paths['grey_max_abs_diff'] <= 1.0 + 1e-9  # The grey level, up to uint8 rounding.
  np.testing.assert_allclose(x.mean(-1), inputs.mean(-1), atol=1.0 + 1e-9)
  assert np.abs(x - x.mean(-1, keepdims=True)).mean() > 5  # Colours were generated.
  c.sample.mode = 'inpaint'  # A grey image for a colour model is refused.
  with pytest.raises(editing_inputs.InputError, match='1.png is grayscale'):
    sample_job.sample_from_workdir(c, str(tmp_path / 'run'), exp)
