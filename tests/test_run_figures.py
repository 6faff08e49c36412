"""Figures of one run: which grids are shown, which metric is drawn, and the PNGs themselves."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import run_figures
from ddpm_jax.errors import UserError


def _workdir(tmp_path, with_eval=True, grid_steps=(100, 200, 300, 400, 500, 600, 700)):
  wd = tmp_path / 'run'
  (wd / 'samples').mkdir(parents=True)
  with open(wd / 'metrics.jsonl', 'w') as f:
    for step in range(50, 751, 50):
      f.write(json.dumps({'step': step, 'train/loss': 1.0 / step}) + '\n')
    f.write('{"step": 800, "train/lo')  # A running job's half-written last line.
  if with_eval:
    with open(wd / 'eval_results.csv', 'w') as f:
      f.write('step,bpd,fd_fmnist,fid\n250,4.1,300.5,\n500,3.9,150.25,\n750,3.8,90.0,\n')
  for s in grid_steps:
    Image.fromarray(np.full((34, 34, 3), s % 255, np.uint8)).save(
        wd / 'samples' / f'train_step{s:08d}.png')
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(wd / 'samples' / 'sample_ema_n16.png')
  return str(wd)


def test_spread_keeps_first_and_last_evenly():
  assert run_figures.spread(list(range(7)), 3) == [0, 3, 6]
  assert run_figures.spread(list(range(7)), 5) == [0, 2, 3, 4, 6]
  assert run_figures.spread([1, 2], 5) == [1, 2]
  assert run_figures.spread(list(range(4)), 1) == [3]


def test_sample_grids_by_step_only_training_grids(tmp_path):
  wd = _workdir(tmp_path, grid_steps=(1500, 300, 6000))
  assert [s for s, _ in run_figures.sample_grids(wd)] == [300, 1500, 6000]


def test_quality_metric_is_the_filled_column():
  assert run_figures.quality_metric([{'fid': None, 'fd_fmnist': 3.0}]) == 'fd_fmnist'
  assert run_figures.quality_metric([{'fid': 9.0, 'fd_fmnist': None}]) == 'fid'
  assert run_figures.quality_metric([{'bpd': 3.0}]) is None


def test_curves_and_grids_are_written(tmp_path):
  wd = _workdir(tmp_path)
  curves = run_figures.plot_curves(wd, str(tmp_path / 'c.png'), floor=12.5)
  with Image.open(curves) as im:
    width, height = im.size
  assert width > 2.5 * height  # Three panels side by side: loss, bits/dim, FD-FMNIST.
  grids = run_figures.plot_grids(wd, str(tmp_path / 'g.png'), n=3)
  with Image.open(grids) as im:
    assert im.size[0] > 2.5 * im.size[1]


def test_loss_only_run_has_two_panels(tmp_path):
  wd = _workdir(tmp_path, with_eval=False)
  with Image.open(run_figures.plot_curves(wd, str(tmp_path / 'c.png'))) as im:
    width, height = im.size
  assert 1.5 * height < width < 2.5 * height


def test_empty_workdir_is_one_line(tmp_path):
  with pytest.raises(UserError, match='nothing to plot'):
    run_figures.plot_curves(str(tmp_path), str(tmp_path / 'c.png'))
  with pytest.raises(UserError, match='no train_step'):
    run_figures.plot_grids(str(tmp_path), str(tmp_path / 'g.png'))


def test_moving_average_is_trailing_over_partial_windows():
  np.testing.assert_allclose(run_figures.moving_average([1.0, 2.0, 3.0, 4.0, 6.0], window=3),
                             [1.0, 1.5, 2.0, 3.0, 13 / 3])
  np.testing.assert_allclose(run_figures.moving_average([5.0, 7.0]), [5.0, 6.0])  # Window 10.
