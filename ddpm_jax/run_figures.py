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
import math
import os
import re

from absl import flags

from ddpm_jax import cli
from ddpm_jax.errors import UserError
from ddpm_jax.evaluators import results
from ddpm_jax.metric_writers import METRICS_JSONL, read_metrics, series
from ddpm_jax.sweep.plots import SMOOTH_WINDOW, moving_average

CURVES_PNG = 'curves.png'
GRIDS_PNG = 'samples_by_step.png'
_GRID_NAME = re.compile(r'train_step(\d+)\.png$')


def sample_grids(workdir: str) -> list[tuple[int, str]]:
  """(step, path) of the training-time sample grids of `workdir`, by step."""
  found = []
  for path in glob.glob(os.path.join(workdir, 'samples', 'train_step*.png')):
    m = _GRID_NAME.search(path)
    if m:
      found.append((int(m.group(1)), path))
  return sorted(found)


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
  for key in ('fid', 'fd_fmnist'):
    if any(r.get(key) is not None for r in eval_rows):
      return key
  return None


def plot_curves(workdir: str, path: str, floor: float | None = None) -> str:
  """Loss, bits/dim and sample quality against the step; returns `path`."""
  from matplotlib.figure import Figure  # Imported lazily: only the plots need it.
  records = read_metrics(os.path.join(workdir, METRICS_JSONL))
  eval_rows = results.read_csv(os.path.join(workdir, results.CSV_NAME))
  loss = series(records, 'train/loss') or series(records, 'loss')
  if not loss and not eval_rows:
    raise UserError(f'{workdir} holds no {METRICS_JSONL} losses and no '
                    f'{results.CSV_NAME}: nothing to plot (is it a training workdir?)')
  quality = quality_metric(eval_rows)
  panels = [('train loss (L_simple)', loss, True), ('bits/dim', series(eval_rows, 'bpd'), False)]
  if quality:
    panels.append(({'fid': 'FID', 'fd_fmnist': 'FD-FMNIST'}[quality],
                   series(eval_rows, quality), False))
  fig = Figure(figsize=(4.2 * len(panels), 3.6), layout='constrained')
  axes = fig.subplots(1, len(panels))
  for i, (ax, (title, curve, smooth)) in enumerate(zip(axes, panels)):
    steps = [s for s, _ in curve]
    values = [v for _, v in curve]
    if smooth and values:
      ax.plot(steps, values, color='tab:blue', alpha=0.25, linewidth=0.8)
      # A geometric mean: on the log axis, the first large losses do not hold the curve up.
      smooth = [math.exp(v) for v in moving_average([math.log(max(v, 1e-12)) for v in values])]
      ax.plot(steps, smooth, color='tab:blue', linewidth=1.5,
              label=f'geometric moving average of {SMOOTH_WINDOW}')
      ax.set_yscale('log')
    elif values:
      ax.plot(steps, values, 'o-', color='tab:orange', linewidth=1.5)
      for s, v in curve:
        ax.annotate(f'{v:.3g}', (s, v), textcoords='offset points', xytext=(0, 6),
                    ha='center', fontsize='small')
    if floor is not None and i == len(panels) - 1 and quality:
      ax.axhline(floor, color='gray', linestyle='--', linewidth=1.2)
      ax.annotate(f'real data: {floor:.3g}', (0.02, floor), xycoords=('axes fraction', 'data'),
                  xytext=(0, 4), textcoords='offset points', fontsize='small', color='gray')
      ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(True, which='both', alpha=0.3)
  fig.savefig(path, dpi=110)
  return path


def plot_grids(workdir: str, path: str, n: int = 5) -> str:
  """Up to `n` training-time sample grids side by side, titled by step; returns `path`."""
  from matplotlib.figure import Figure
  from PIL import Image
  grids = spread(sample_grids(workdir), n)
  if not grids:
    raise UserError(f'{workdir}/samples holds no train_step*.png grids: nothing to show')
  fig = Figure(figsize=(3.2 * len(grids), 3.5), layout='constrained')
  axes = fig.subplots(1, len(grids), squeeze=False)[0]
  for ax, (step, grid_path) in zip(axes, grids):
    with Image.open(grid_path) as im:
      ax.imshow(im.convert('RGB'), interpolation='nearest')
    ax.set_title(f'step {step:,}')
    ax.axis('off')
  fig.savefig(path, dpi=110)
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
