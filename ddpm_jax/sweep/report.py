"""Report of an ablation sweep: one row per member as Markdown, CSV and PNG plots.

Usage: `python -m ddpm_jax.sweep.report runs/table2 [--out=DIR] [--last=N]`, after (or during)
`python -m ddpm_jax.sweep`. Writes into DIR (default: the sweep directory) `report.csv` (floats
at full precision), `report.md` (floats to 4 significant digits) and two plots, and prints the
Markdown table and the paths written:
- `loss_curves.png`: train/loss against step, one line per member (`run_figures.plot_loss`);
- `metric_per_axis.png`: for each override key taking >= 2 values and each of final_loss,
  final_bpd, final_fd_fmnist, the metric of every member against the key's values (points, with
  a line at their mean); left out when nothing varies.

A sweep directory holds `sweep.json` (the config, the sweep file, the members' names and
overrides) and one training workdir per member with `sweep_member.json` (status, seconds,
error), `metrics.jsonl` and `eval_results.csv`; without `sweep.json`, every subdirectory with a
`sweep_member.json` is a member. Members never started are `pending`; members without results
have empty cells.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import math
import os
import statistics
import sys

from ddpm_jax import image_files
from ddpm_jax.evaluators import results
from ddpm_jax.evaluators.results import METRICS
from ddpm_jax.metric_writers import METRICS_JSONL, read_metrics, series
from ddpm_jax.run_figures import SMOOTH_WINDOW, plot_loss

SWEEP_JSON = 'sweep.json'
MEMBER_JSON = 'sweep_member.json'
REPORT_CSV = 'report.csv'
REPORT_MD = 'report.md'
LOSS_PNG = 'loss_curves.png'
AXIS_PNG = 'metric_per_axis.png'

HIGHER_IS_BETTER = frozenset({'is'})
DEFAULT_LAST = 10
AXIS_METRICS = ('final_loss', 'final_bpd', 'final_fd_fmnist')


# Reading --------------------------------------------------------------------------------------

def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {path}: {e}') from e


def list_members(sweep_dir: str) -> tuple[dict, list[dict]]:
  """(sweep.json contents or {}, members as {'name', 'overrides', 'dir'}) of a sweep directory."""
  if not os.path.isdir(sweep_dir):
    raise FileNotFoundError(f'sweep directory not found: {sweep_dir}')
  sweep_path = os.path.join(sweep_dir, SWEEP_JSON)
  if os.path.exists(sweep_path):
    info = _read_json(sweep_path)
    members = [{'name': str(m['name']), 'overrides': dict(m.get('overrides') or {}),
                'dir': os.path.join(sweep_dir, str(m['name']))} for m in info.get('members', [])]
  else:
    info = {}
    names = sorted(n for n in os.listdir(sweep_dir)
                   if os.path.isfile(os.path.join(sweep_dir, n, MEMBER_JSON)))
    members = [{'name': n, 'dir': os.path.join(sweep_dir, n),
                'overrides': dict(member_state(os.path.join(sweep_dir, n)).get('overrides')
                                  or {})} for n in names]
  if not members:
    raise ValueError(f'no sweep members found in {sweep_dir}: run python -m ddpm_jax.sweep '
                     'first')
  return info, members


# Summaries ------------------------------------------------------------------------------------

def best(values: list[float], higher_is_better: bool = False) -> float | None:
  """The best finite value (max or min); NaN when all are NaN, None when there are none."""
  finite = [v for v in values if math.isfinite(v)]
  if not finite:
    return float('nan') if values else None
  return max(finite) if higher_is_better else min(finite)


def loss_summary(records: list[dict], last: int = DEFAULT_LAST) -> dict:
  """final_step, final_loss (mean of the last `last` logged losses) and best_loss."""
  loss = [v for _, v in series(records, 'train/loss')]
  return {
      'final_step': max((int(r['step']) for r in records), default=None),
      'final_loss': sum(loss[-last:]) / len(loss[-last:]) if loss else None,
      'best_loss': best(loss),
  }


def eval_summary(eval_rows: list[dict], records: list[dict]) -> dict:
  """final_<m> (value at the largest step) and best_<m> for each metric some row has: from the
  rows of eval_results.csv, else from the `eval/<m>` keys of metrics.jsonl."""
  out = {}
  for m in METRICS:
    points = series(eval_rows, m) or series(records, f'eval/{m}')
    if points:
      out[f'final_{m}'] = points[-1][1]
      out[f'best_{m}'] = best([v for _, v in points], m in HIGHER_IS_BETTER)
  return out


def steps_per_sec(records: list[dict]) -> float | None:
  """Median `perf/steps_per_sec` over the logged rows after the first (which includes
  compilation); None with fewer than two rows."""
  values = [float(r['perf/steps_per_sec']) for r in records
            if r.get('perf/steps_per_sec') is not None]
  return statistics.median(values[1:]) if len(values) > 1 else None


def member_state(member_dir: str) -> dict:
  """The member's `sweep_member.json`; {'status': 'pending'} when there is none."""
  path = os.path.join(member_dir, MEMBER_JSON)
  if not os.path.exists(path):
    return {'status': 'pending'}
  try:
    return _read_json(path)
  except ValueError:  # Being rewritten by the sweep at this moment.
    return {'status': 'unknown'}


def member_row(member: dict, last: int = DEFAULT_LAST) -> tuple[dict, list[tuple[int, float]]]:
  """(row of the report without override columns, train/loss curve) of one member."""
  state = member_state(member['dir'])
  records = read_metrics(os.path.join(member['dir'], METRICS_JSONL))
  eval_rows = results.read_csv(os.path.join(member['dir'], results.CSV_NAME))
  row = {'name': member['name'], 'status': str(state.get('status', 'unknown'))}
  row.update(loss_summary(records, last))
  row.update(eval_summary(eval_rows, records))
  row['steps_per_sec'] = steps_per_sec(records)
  row['seconds'] = state.get('seconds')
  row['error'] = state.get('error')
  return row, series(records, 'train/loss')


def _columns(override_keys: list[str], rows: list[dict]) -> list[str]:
  metric_cols = [f'{kind}_{m}' for m in METRICS for kind in ('final', 'best')
                 if any(f'{kind}_{m}' in r for r in rows)]
  cols = ['name', 'status', *override_keys, 'final_step', 'final_loss', 'best_loss',
          *metric_cols, 'steps_per_sec', 'seconds']
  return cols + (['error'] if any(r.get('error') for r in rows) else [])


def _gather(sweep_dir: str, last: int) -> tuple[dict, list[str], list[dict], list[list]]:
  """(sweep.json, override keys, rows with every column, loss curves) of a sweep directory."""
  if last < 1:
    raise ValueError(f'--last must be >= 1, got {last}')
  info, members = list_members(sweep_dir)
  rows, curves = zip(*(member_row(member, last) for member in members))
  keys = list(dict.fromkeys(k for member in members for k in member['overrides']))
  columns = _columns(keys, rows)
  full = [{c: {**row, **member['overrides']}.get(c) for c in columns}
          for row, member in zip(rows, members)]
  return info, keys, full, curves


def collect(sweep_dir: str, last: int = DEFAULT_LAST) -> list[dict]:
  """One dict per member, in sweep order, with every report column (None where absent)."""
  return _gather(sweep_dir, last)[2]


# Rendering ------------------------------------------------------------------------------------

def _cell(value, column: str, override_keys: list[str], digits: int | None) -> str:
  if value is None:
    return ''
  if column in override_keys:
    return format_override(value)
  if isinstance(value, float):
    return f'{value:.{digits}g}' if digits else repr(value)
  return str(value)


def write_csv(rows: list[dict], columns: list[str], override_keys: list[str], path: str) -> str:
  """Writes the rows as CSV (floats at full precision, empty cells for None); returns path."""
  cells = [[_cell(row[c], c, override_keys, None) for c in columns] for row in rows]
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([columns, *cells])
  return path


def to_markdown(rows: list[dict], columns: list[str], override_keys: list[str],
                sweep_dir: str, info: dict, last: int = DEFAULT_LAST) -> str:
  """The report as Markdown: title, legend lines and a table with floats to 4 digits."""
  def esc(text):
    return text.replace('|', '\\|').replace('\n', ' ')

  title = f'# Sweep report: `{sweep_dir}`'
  if info.get('config') or info.get('sweep'):
    title += f' (config `{info.get("config", "?")}`, sweep `{info.get("sweep", "?")}`)'
  lines = [title, '']
  counts = collections.Counter(r['status'] for r in rows)
  lines += [f'{len(rows)} members: ' + ', '.join(f'{n} {s}' for s, n in counts.items()) + '.',
            '']
  present = [m for m in METRICS if f'final_{m}' in columns]
  lower = ['loss'] + [m for m in present if m not in HIGHER_IS_BETTER]
  higher = [m for m in present if m in HIGHER_IS_BETTER]
  better = f'Lower is better: {", ".join(lower)}'
  better += f'; higher is better: {", ".join(higher)}.' if higher else '.'
  lines += [better + f' final_loss: mean train/loss over the last {last} logged steps; '
            'final_<metric>: at the largest evaluated step; steps_per_sec: median without the '
            'first logged row.', '']
  shown = [c for c in columns if c != 'error']
  lines.append('| ' + ' | '.join(shown) + ' |')
  lines.append('|' + '|'.join('---' for _ in shown) + '|')
  for row in rows:
    lines.append('| ' + ' | '.join(esc(_cell(row[c], c, override_keys, 4)) for c in shown)
                 + ' |')
  failed = {r['name']: str(r['error']).strip().split('\n')[-1] for r in rows if r.get('error')}
  if failed:  # The last line of each error: its exception.
    lines += ['', 'Errors:'] + [f'- `{n}`: {esc(e[:300])}' for n, e in failed.items()]
  return '\n'.join(lines) + '\n'


# Plots ----------------------------------------------------------------------------------------

def format_override(value) -> str:
  """An override value, compactly: strings as they are, containers as compact JSON."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple, dict)):
    return json.dumps(value, separators=(',', ':'))
  return repr(value) if isinstance(value, float) else str(value)


def _distinct(rows: list[dict], key: str) -> list[str]:
  """The rendered values of `key` over the rows, in first-seen order."""
  return list(dict.fromkeys(format_override(r[key]) for r in rows if r.get(key) is not None))


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def plot_loss_curves(rows: list[dict], curves: list[list], path: str) -> str | None:
  """train/loss against step, one line per member labelled with its name (the overrides that
  vary); None when no member logged a loss."""
  drawn = [(row['name'], curve) for row, curve in zip(rows, curves) if curve]
  if not drawn:
    return None
  with image_files.figure(path, panel=(8, 5)) as axes:
    ax = axes[0][0]
    for name, curve in drawn:
      plot_loss(ax, curve, name)
    ax.set_xlabel('step')
    ax.set_ylabel(f'train/loss (geometric moving average of {SMOOTH_WINDOW} logged points)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize='small', loc='upper right')
  return path


def plot_metric_per_axis(rows: list[dict], override_keys: list[str], path: str) -> str | None:
  """One subplot per (override key with >= 2 values, final metric present): every member's
  value against the key's values, with a line at their mean. None when nothing to plot."""
  keys = [k for k in override_keys if len(_distinct(rows, k)) >= 2]
  metrics = [m for m in AXIS_METRICS if any(_finite(r.get(m)) for r in rows)]
  if not keys or not metrics:
    return None
  with image_files.figure(path, len(keys), len(metrics), panel=(3.5, 2.8)) as grid:
    for i, key in enumerate(keys):
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
  return path


# Entry points ---------------------------------------------------------------------------------

def write_report(sweep_dir: str, out_dir: str | None = None,
                 last: int = DEFAULT_LAST) -> dict:
  """Writes report.csv, report.md and the plots into `out_dir` (default `sweep_dir`); returns
  {'csv', 'md', 'loss_curves', 'metric_per_axis': path}, without the plots left out."""
  info, keys, rows, curves = _gather(sweep_dir, last)
  out_dir = out_dir or sweep_dir
  os.makedirs(out_dir, exist_ok=True)
  columns = list(rows[0])
  paths = {'csv': write_csv(rows, columns, keys, os.path.join(out_dir, REPORT_CSV))}
  paths['md'] = os.path.join(out_dir, REPORT_MD)
  with open(paths['md'], 'w') as f:
    f.write(to_markdown(rows, columns, keys, sweep_dir, info, last))
  figures = {
      'loss_curves': plot_loss_curves(rows, curves, os.path.join(out_dir, LOSS_PNG)),
      'metric_per_axis': plot_metric_per_axis(rows, keys, os.path.join(out_dir, AXIS_PNG)),
  }
  paths.update({k: p for k, p in figures.items() if p})
  return paths


def main(argv: list[str] | None = None) -> int:
  """`python -m ddpm_jax.sweep.report SWEEP_DIR [--out=DIR] [--last=N]`; the exit status."""
  parser = argparse.ArgumentParser(prog='python -m ddpm_jax.sweep.report',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('sweep_dir', help='Directory of a sweep (python -m ddpm_jax.sweep).')
  parser.add_argument('--out', default=None, help='Output directory (default: SWEEP_DIR).')
  parser.add_argument('--last', type=int, default=DEFAULT_LAST,
                      help='final_loss is the mean train/loss over the last N logged steps.')
  args = parser.parse_args(argv)
  try:
    paths = write_report(args.sweep_dir, args.out, args.last)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  with open(paths['md']) as f:
    print(f.read())
  for name in ('csv', 'md', 'loss_curves', 'metric_per_axis'):
    print(f'wrote {paths[name]}' if name in paths else f'skipped {name}: nothing to plot')
  return 0


if __name__ == '__main__':
  sys.exit(main())
