"""Figures of one training run: its curves, and its samples as training went on.

  python -m ddpm_jax.run_figures WORKDIR [--out=DIR] [--floor=VALUE] [--grids=N]

Reads what training writes to WORKDIR (`metrics.jsonl`, `eval_results.csv`,
`samples/train_step*.png`) and writes two PNGs to DIR (default WORKDIR):
- `curves.png`: the training loss (smoothed), bits/dim and the sample-quality distance against
  the step, one panel each. `--floor` draws the distance that real data reaches (e.g. FD-FMNIST
  between the test and training sets) as a dashed line on the last panel.
- `samples_by_step.png`: up to N of the training-time sample grids side by side, each titled
  with its step.
Works on a run that is still going: it draws what has been written so far.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np
from absl import flags
from PIL import Image

from ddpm_jax import cli, image_files
from ddpm_jax.errors import UserError
from ddpm_jax.evaluators import results
from ddpm_jax.metric_writers import METRICS_JSONL, read_metrics, series

CURVES_PNG = 'curves.png'
GRIDS_PNG = 'samples_by_step.png'
_GRID_NAME = re.compile(r'train_step(\d+)\.png$')
SMOOTH_WINDOW = 10  # Logged points in the moving average of a loss curve.
QUALITY_TITLES = {'fid': 'FID', 'fd_fmnist': 'FD-FMNIST'}


def sample_grids(workdir: str) -> list[tuple[int, str]]:
  """(step, path) of the training-time sample grids of `workdir`, by step."""
  paths = glob.glob(os.path.join(workdir, 'samples', 'train_step*.png'))
  return sorted((int(m.group(1)), p) for p in paths if (m := _GRID_NAME.search(p)))


def spread(items: list, n: int) -> list:
  """At most `n` of `items`, evenly spaced, always with the first and the last."""
  if n <= 0 or len(items) <= n:
    return list(items)
  if n == 1:
    return [items[-1]]
  picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
  return [items[i] for i in picks]


def quality_metric(eval_rows: list[dict]) -> str | None:
  """The sample-quality column the evaluations filled: fid, else fd_fmnist."""
  for key in QUALITY_TITLES:
    if any(r.get(key) is not None for r in eval_rows):
      return key
  return None


def moving_average(values, window: int = SMOOTH_WINDOW) -> np.ndarray:
  """Trailing moving average: point i is the mean of points max(0, i-window+1)..i."""
  total = np.cumsum(np.concatenate([[0.0], values]))
  end = np.arange(1, len(values) + 1)
  start = np.maximum(0, end - window)
  return (total[end] - total[start]) / (end - start)


def plot_loss(ax, curve: list[tuple[int, float]], label: str | None = None) -> None:
  """A loss curve (step, value) on a log axis: the values faint, and their geometric moving
  average over SMOOTH_WINDOW logged points, so that the first large losses do not hold the
  smoothed curve up."""
  steps, values = zip(*curve)
  smooth = np.exp(moving_average(np.log(np.maximum(values, 1e-12))))
  line, = ax.plot(steps, smooth, label=label, linewidth=1.5)
  ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)
  ax.set_yscale('log')


def plot_curves(workdir: str, path: str, floor: float | None = None) -> str:
  """Loss, bits/dim and sample quality against the step, one panel each; returns `path`."""
  records = read_metrics(os.path.join(workdir, METRICS_JSONL))
  eval_rows = results.read_csv(os.path.join(workdir, results.CSV_NAME))
  loss = series(records, 'train/loss') or series(records, 'loss')
  if not loss and not eval_rows:
    raise UserError(f'{workdir} holds no {METRICS_JSONL} losses and no '
                    f'{results.CSV_NAME}: nothing to plot (is it a training workdir?)')
  quality = quality_metric(eval_rows)
  panels = [('bits/dim', 'bpd')] + ([(QUALITY_TITLES[quality], quality)] if quality else [])
  with image_files.figure(path, cols=1 + len(panels), dpi=110) as axes:
    loss_ax, *eval_axes = axes[0]
    if loss:
      plot_loss(loss_ax, loss)
    loss_ax.set_title('train loss (L_simple)')
    loss_ax.set_ylabel(f'geometric moving average of {SMOOTH_WINDOW}')
    for ax, (title, column) in zip(eval_axes, panels):
      curve = series(eval_rows, column)
      if curve:
        ax.plot(*zip(*curve), 'o-', color='tab:orange', linewidth=1.5)
      for s, v in curve:
        ax.annotate(f'{v:.3g}', (s, v), textcoords='offset points', xytext=(0, 6),
                    ha='center', fontsize='small')
      ax.set_title(title)
    if floor is not None and quality:
      ax = eval_axes[-1]
      ax.axhline(floor, color='gray', linestyle='--', linewidth=1.2)
      ax.annotate(f'real data: {floor:.3g}', (0.02, floor), xycoords=('axes fraction', 'data'),
                  xytext=(0, 4), textcoords='offset points', fontsize='small', color='gray')
      ax.set_ylim(bottom=0)
    for ax in axes[0]:
      ax.set_xlabel('step')
      ax.grid(True, which='both', alpha=0.3)
  return path


def plot_grids(workdir: str, path: str, n: int = 5) -> str:
  """Up to `n` training-time sample grids side by side, titled by step; returns `path`."""
  grids = spread(sample_grids(workdir), n)
  if not grids:
    raise UserError(f'{workdir}/samples holds no train_step*.png grids: nothing to show')
  with image_files.figure(path, cols=len(grids), panel=(3.2, 3.5), dpi=110) as axes:
    for ax, (step, grid_path) in zip(axes[0], grids):
      with Image.open(grid_path) as im:
        ax.imshow(im.convert('RGB'), interpolation='nearest')
      ax.set_title(f'step {step:,}')
      ax.axis('off')
  return path


def _define_flags() -> None:
  flags.DEFINE_string('out', '', 'Folder for the PNGs (default: the workdir).')
  flags.DEFINE_float('floor', None, 'Sample-quality distance of real data, drawn dashed.')
  flags.DEFINE_integer('grids', 5, 'Sample grids to show, evenly spaced over the steps.')


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise UserError('usage: python -m ddpm_jax.run_figures WORKDIR [--out=DIR] [--floor=VALUE] '
                    '[--grids=N]')
  workdir = argv[1]
  if not os.path.isdir(workdir):
    raise UserError(f'workdir not found: {workdir}')
  out = flags.FLAGS.out or workdir
  os.makedirs(out, exist_ok=True)
  print(plot_curves(workdir, os.path.join(out, CURVES_PNG), flags.FLAGS.floor))
  if sample_grids(workdir):
    print(plot_grids(workdir, os.path.join(out, GRIDS_PNG), flags.FLAGS.grids))


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
