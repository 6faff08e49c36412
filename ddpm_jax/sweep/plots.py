"""The sweep report's plots (`report.write_report` writes them): `loss_curves.png`, train/loss
against step, one line per member, log-scale y, a trailing moving average over `SMOOTH_WINDOW`
logged points (raw values faint); `metric_per_axis.png`, for each override key taking >= 2
values and each of final_loss, final_bpd, final_fd_fmnist, the metric of every member against
the key's values (points, with a line at their mean), left out when nothing varies."""

from __future__ import annotations

import json
import math

AXIS_METRICS = ('final_loss', 'final_bpd', 'final_fd_fmnist')
SMOOTH_WINDOW = 10  # Logged points in the trailing moving average of loss_curves.png.


def format_override(value) -> str:
  """An override value, compactly: strings as they are, containers as compact JSON."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple, dict)):
    return json.dumps(value, separators=(',', ':'))
  return repr(value) if isinstance(value, float) else str(value)


def member_labels(rows: list[dict], override_keys: list[str]) -> list[str]:
  """Short legend labels: the values of the override keys that vary across members (all of
  them when none varies), else the member name."""
  varying = [k for k in override_keys if len(_distinct(rows, k)) >= 2] or override_keys
  labels = []
  for row in rows:
    values = [format_override(row[k]) for k in varying if row.get(k) is not None]
    labels.append(', '.join(values) if values else row['name'])
  return labels


def _distinct(rows: list[dict], key: str) -> list[str]:
  """The rendered values of `key` over the rows, in first-seen order."""
  seen = []
  for row in rows:
    if row.get(key) is not None and format_override(row[key]) not in seen:
      seen.append(format_override(row[key]))
  return seen


def moving_average(values: list[float], window: int = SMOOTH_WINDOW) -> list[float]:
  """Trailing moving average: point i is the mean of points max(0, i-window+1)..i."""
  out, total = [], 0.0
  for i, v in enumerate(values):
    total += v
    if i >= window:
      total -= values[i - window]
    out.append(total / min(i + 1, window))
  return out


def plot_loss_curves(curves: list[list], labels: list[str], path: str) -> str | None:
  """train/loss against step per member (smoothed, log-scale y); None when no member logged a
  loss."""
  from matplotlib.figure import Figure  # Imported lazily: only the plots need it.
  drawn = [(c, l) for c, l in zip(curves, labels) if c]
  if not drawn:
    return None
  fig = Figure(figsize=(8, 5), layout='constrained')
  ax = fig.add_subplot()
  positive = all(v > 0 for c, _ in drawn for _, v in c if math.isfinite(v))
  for curve, label in drawn:
    steps = [s for s, _ in curve]
    values = [v for _, v in curve]
    line, = ax.plot(steps, moving_average(values), label=label, linewidth=1.5)
    ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
  if positive:
    ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel(f'train/loss (moving average of {SMOOTH_WINDOW} logged points)')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize='small', loc='upper right')
  fig.savefig(path, dpi=100)
  return path


def plot_metric_per_axis(rows: list[dict], override_keys: list[str], path: str) -> str | None:
  """One subplot per (override key with >= 2 values, final metric present): every member's
  value against the key's values, with a line at their mean. None when nothing to plot."""
  axes = [k for k in override_keys if len(_distinct(rows, k)) >= 2]
  metrics = [m for m in AXIS_METRICS if m in rows[0]
             and any(_finite(r[m]) for r in rows)]
  if not axes or not metrics:
    return None
  from matplotlib.figure import Figure  # Imported lazily: only the plots need it.
  fig = Figure(figsize=(3.5 * len(metrics), 2.8 * len(axes)), layout='constrained')
  grid = fig.subplots(len(axes), len(metrics), squeeze=False)
  for i, key in enumerate(axes):
    values = _distinct(rows, key)
    for j, metric in enumerate(metrics):
      ax = grid[i][j]
      for x, value in enumerate(values):
        ys = [r[metric] for r in rows if r.get(key) is not None
              and format_override(r[key]) == value and _finite(r[metric])]
        if ys:
          ax.hlines(sum(ys) / len(ys), x - 0.3, x + 0.3, color='C1', linewidth=2)
          ax.plot([x] * len(ys), ys, 'o', color='C0', markersize=4, alpha=0.7)
      ax.set_xticks(range(len(values)), values, fontsize='small')
      ax.set_xlim(-0.5, len(values) - 0.5)
      ax.set_xlabel(key, fontsize='small')
      ax.set_ylabel(metric, fontsize='small')
      ax.grid(True, axis='y', alpha=0.3)
  fig.savefig(path, dpi=100)
  return path


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)
