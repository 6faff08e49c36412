"""Report of an ablation sweep: one row per member as Markdown, CSV and PNG plots.

Usage: `python -m ddpm_jax.report runs/table2 [--out=DIR] [--last=N]`, after (or during)
`python -m ddpm_jax.sweep`. Writes into DIR (default: the sweep directory)

  report.csv           every column below, floats at full precision;
  report.md            the same table, floats to 4 significant digits;
  loss_curves.png      train/loss against step, one line per member, log-scale y, a trailing
                       moving average over `SMOOTH_WINDOW` logged points (raw values faint);
  metric_per_axis.png  for each override key taking >= 2 values and each of final_loss,
                       final_bpd, final_fd_fmnist: the metric of every member against the key's
                       values (points, with a line at their mean); left out when nothing varies,

prints the Markdown table and the paths written. From Python: `collect(sweep_dir)` returns the
rows, `write_report(sweep_dir, out_dir)` writes the files and returns their paths.

A sweep directory holds `sweep.json` (the config, the sweep file and the members' names and
overrides) and one training workdir per member, named after the member, with
`sweep_member.json` (status, seconds, error), `metrics.jsonl` and optionally
`eval_results.csv`. Without `sweep.json`, every subdirectory holding a `sweep_member.json` is a
member. Members never started (no directory or no `sweep_member.json`) are `pending`; running,
failed and pending members are listed with empty cells where they have no results.

Columns: name, status, one per override key (first-seen order), final_step, final_loss (mean
`train/loss` over the last `--last` logged steps), best_loss (minimum `train/loss`), then
final_<m> (at the largest evaluated step) and best_<m> for each metric m of `METRICS` that some
member has (from `eval_results.csv`, else `eval/<m>` in `metrics.jsonl`), steps_per_sec (median
`perf/steps_per_sec` without the first logged row, which includes compilation), seconds, and
error when a member failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys

SWEEP_JSON = 'sweep.json'
MEMBER_JSON = 'sweep_member.json'
METRICS_JSONL = 'metrics.jsonl'
EVAL_CSV = 'eval_results.csv'  # evaluate.CSV_NAME (not imported: it would import JAX).
REPORT_CSV = 'report.csv'
REPORT_MD = 'report.md'
LOSS_PNG = 'loss_curves.png'
AXIS_PNG = 'metric_per_axis.png'

METRICS = ('bpd', 'fd_fmnist', 'fid', 'is', 'kid')
HIGHER_IS_BETTER = frozenset({'is'})
AXIS_METRICS = ('final_loss', 'final_bpd', 'final_fd_fmnist')
DEFAULT_LAST = 10
SMOOTH_WINDOW = 10  # Logged points in the trailing moving average of loss_curves.png.


# Reading --------------------------------------------------------------------------------------

def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {path}: {e}') from e


def read_metrics(path: str) -> list[dict]:
  """The records of a `metrics.jsonl` in file order; [] when absent. Unparsable lines (the last
  line of a running job may be half written) are skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and 'step' in record:
        records.append(record)
  return records


def _to_float(text: str) -> float | None:
  try:
    return float(text) if text not in (None, '') else None
  except ValueError:
    return None


def read_eval_csv(path: str) -> list[dict]:
  """The rows of an `eval_results.csv` as {'step': int, metric: float | None}; [] when absent."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      step = _to_float(row.get('step'))
      if step is None:
        continue
      rows.append({'step': int(step), **{m: _to_float(row.get(m)) for m in METRICS}})
  return rows


def list_members(sweep_dir: str) -> tuple[dict, list[dict]]:
  """(sweep.json contents or {}, members as {'name', 'overrides', 'dir'}) of a sweep directory."""
  if not os.path.isdir(sweep_dir):
    raise FileNotFoundError(f'sweep directory not found: {sweep_dir}')
  sweep_path = os.path.join(sweep_dir, SWEEP_JSON)
  if os.path.exists(sweep_path):
    info = _read_json(sweep_path)
    members = [{'name': str(m['name']), 'overrides': dict(m.get('overrides') or {}),
                'dir': os.path.join(sweep_dir, m.get('workdir') or str(m['name']))}
               for m in info.get('members', [])]
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

def series(records: list[dict], key: str) -> list[tuple[int, float]]:
  """(step, value) of `key`, sorted by step; a step logged twice (a resumed run logs again the
  steps after its checkpoint) keeps its last value."""
  by_step = {}
  for r in records:
    if r.get(key) is not None:
      by_step[int(r['step'])] = float(r[key])
  return sorted(by_step.items())


def best(values: list[float], higher_is_better: bool = False) -> float | None:
  """The best finite value (max or min); NaN when all are NaN, None when there are none."""
  if not values:
    return None
  finite = [v for v in values if math.isfinite(v)]
  if not finite:
    return float('nan')
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
  eval_rows = read_eval_csv(os.path.join(member['dir'], EVAL_CSV))
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
  rows, curves = [], []
  for member in members:
    row, curve = member_row(member, last)
    rows.append(row)
    curves.append(curve)
  keys = []
  for member in members:
    keys.extend(k for k in member['overrides'] if k not in keys)
  columns = _columns(keys, rows)
  full = [{c: {**row, **member['overrides']}.get(c) for c in columns}
          for row, member in zip(rows, members)]
  return info, keys, full, curves


def collect(sweep_dir: str, last: int = DEFAULT_LAST) -> list[dict]:
  """One dict per member, in sweep order, with every report column (None where absent)."""
  return _gather(sweep_dir, last)[2]


# Rendering ------------------------------------------------------------------------------------

def format_override(value) -> str:
  """An override value, compactly: strings as they are, containers as compact JSON."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple, dict)):
    return json.dumps(value, separators=(',', ':'))
  return repr(value) if isinstance(value, float) else str(value)


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
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow([_cell(row[c], c, override_keys, None) for c in columns])
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
  counts = {}
  for r in rows:
    counts[r['status']] = counts.get(r['status'], 0) + 1
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
  failed = [r for r in rows if r.get('error')]
  if failed:
    lines += ['', 'Errors:']
    lines += [f'- `{r["name"]}`: {esc(_last_line(str(r["error"]))[:300])}' for r in failed]
  return '\n'.join(lines) + '\n'


def _last_line(text: str) -> str:
  lines = text.strip().splitlines()
  return lines[-1] if lines else ''


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


# Plots ----------------------------------------------------------------------------------------

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
  plots = {
      'loss_curves': plot_loss_curves(curves, member_labels(rows, keys),
                                      os.path.join(out_dir, LOSS_PNG)),
      'metric_per_axis': plot_metric_per_axis(rows, keys, os.path.join(out_dir, AXIS_PNG)),
  }
  paths.update({k: p for k, p in plots.items() if p})
  return paths


def main(argv: list[str] | None = None) -> int:
  """`python -m ddpm_jax.report SWEEP_DIR [--out=DIR] [--last=N]`; returns the exit status."""
  parser = argparse.ArgumentParser(prog='python -m ddpm_jax.report', description=__doc__.split(
      '\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
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
