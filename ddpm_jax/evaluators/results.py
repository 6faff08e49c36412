"""The one writer of evaluation results, and the reader of its CSV (imports no JAX).

Each evaluated step becomes a row of `eval_results.csv` (the sweep report and the run figures
read it), its scalars go to the metric writer (TensorBoard and `metrics.jsonl`, as `eval/<name>`)
and its per-term bits/dim to `bpd_terms_stepN.npz` and `.png`.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from ddpm_jax import image_files

CSV_NAME = 'eval_results.csv'
CSV_FIELDS = ('step', 'bpd', 'prior_bpd', 'decoder_bpd', 'kl_terms_bpd', 'bpd_examples',
              'fd_fmnist', 'fid', 'is', 'kid', 'num_samples', 'sampler', 'sample_steps',
              'seconds')
METRICS = ('bpd', 'fd_fmnist', 'fid', 'is', 'kid')  # The columns that measure the model.


def append_csv(path: str, row: dict) -> None:
  """Appends `row`'s CSV fields to `path`, with the header when the file is new."""
  new = not os.path.exists(path)
  with open(path, 'a', newline='') as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction='ignore')
    if new:
      w.writeheader()
    w.writerow(row)


def _to_float(text: str | None) -> float | None:
  try:
    return float(text) if text not in (None, '') else None
  except ValueError:
    return None


def read_csv(path: str) -> list[dict]:
  """The rows of an `eval_results.csv` as {'step': int, metric: float | None for each of
  `METRICS`}; [] when there is none."""
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if _to_float(r.get('step')) is not None]
  return [{'step': int(float(r['step'])), **{m: _to_float(r.get(m)) for m in METRICS}}
          for r in rows]


def evaluated_steps(workdir: str) -> set[int]:
  """The steps `workdir`'s `eval_results.csv` holds a row of."""
  return {r['step'] for r in read_csv(os.path.join(workdir, CSV_NAME))}


def save_bpd_terms(workdir: str, step: int, row: dict) -> None:
  """The per-term bits/dim of eq. 5 at `step` (`row['bpd_terms']`): `bpd_terms_stepN.npz`
  (`terms[t]` = L_t for t = 0 (the decoder L_0) .. T-1, and the prior L_T) and a plot of L_t
  against t, `bpd_terms_stepN.png`, showing where the bound's bits go."""
  terms = np.asarray(row['bpd_terms'], np.float64)
  stem = os.path.join(workdir, f'bpd_terms_step{step:08d}')
  arrays = {'terms': terms, 'prior': row['prior_bpd'], 'total': row['bpd'],
            'examples': row['bpd_examples']}
  image_files.write_atomic(stem + '.npz', lambda tmp: np.savez(tmp, **arrays))
  with image_files.figure(stem + '.png', panel=(7, 4)) as axes:
    ax = axes[0][0]
    ax.plot(np.arange(len(terms)), terms, linewidth=1.2)
    ax.set_yscale('log')
    ax.set_xlabel('t (0 = decoder L_0)')
    ax.set_ylabel('bits/dim of L_t')
    ax.set_title(f'step {step}: total {row["bpd"]:.4g} bits/dim = prior {row["prior_bpd"]:.2g} '
                 f'+ decoder {row["decoder_bpd"]:.3g} + KL terms {row["kl_terms_bpd"]:.4g}',
                 fontsize='small')
    ax.grid(True, which='both', alpha=0.3)


def record(workdir: str, row: dict, writer=None) -> str:
  """Writes one evaluated step (call on process 0): the CSV row, the scalars to `writer` (a
  `MetricWriter`, if given) and the per-term bits/dim; returns the line to print."""
  os.makedirs(workdir, exist_ok=True)
  append_csv(os.path.join(workdir, CSV_NAME), row)
  scalars = {k: v for k, v in row.items() if isinstance(v, float) and k != 'seconds'}
  if writer is not None:
    writer.write_scalars(row['step'], {f'eval/{k}': v for k, v in scalars.items()})
  if 'bpd_terms' in row:
    save_bpd_terms(workdir, row['step'], row)
  return f'step {row["step"]}: eval ' + ', '.join(f'{k}={v:.5g}' for k, v in scalars.items())
