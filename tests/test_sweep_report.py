"""The sweep report: numbers of hand-written sweep directories, the files written, the CLI."""

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest
from PIL import Image

from ddpm_jax.sweep import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KL_MU = 'diffusion.loss=kl,diffusion.mean_type=mu'
MSE_EPS = 'diffusion.loss=mse,diffusion.mean_type=eps'
MSE_MU = 'diffusion.loss=mse,diffusion.mean_type=mu'
KL_EPS = 'diffusion.loss=kl,diffusion.mean_type=eps'
MEMBERS = [(KL_MU, 'kl', 'mu'), (MSE_EPS, 'mse', 'eps'), (MSE_MU, 'mse', 'mu'),
           (KL_EPS, 'kl', 'eps')]

# Member KL_MU: 15 logged steps; the first perf row (compilation) is an outlier.
LOSSES_A = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.75, 0.7, 0.6, 0.65, 0.55, 0.5, 0.52, 0.48, 0.51]
SPS_A = [0.5, 10.0, 12.0, 11.0, 13.0, 9.0, 10.5, 12.5, 11.5, 10.0, 12.0, 11.0, 13.0, 9.5, 10.0]
# Member MSE_EPS: 12 logged steps, evaluation only in metrics.jsonl (eval/bpd, eval/is).
LOSSES_B = [1.0, 0.8, 0.6, 0.5, 0.45, 0.4, 0.35, 0.33, 0.3, 0.31, 0.29, 0.28]
SPS_B = [1.0] + [20.0 + i for i in range(11)]


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(obj, f)


def _write_metrics(member_dir, rows, truncated_tail=''):
  with open(os.path.join(member_dir, 'metrics.jsonl'), 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
    f.write(truncated_tail)


def _member_json(sweep_dir, name, status, **extra):
  overrides = {'diffusion.loss': name.split(',')[0].split('=')[1],
               'diffusion.mean_type': name.split(',')[1].split('=')[1]}
  _write_json(os.path.join(sweep_dir, name, 'sweep_member.json'),
              {'name': name, 'overrides': overrides, 'status': status, **extra})


def _train_rows(losses, sps):
  return [{'step': 10 * i, 'train/loss': l, 'train/grad_norm': 1.0, 'train/lr': 2e-4,
           'perf/steps_per_sec': s, 'perf/images_per_sec': 128 * s}
          for i, (l, s) in enumerate(zip(losses, sps))]


def make_sweep(root, with_sweep_json=True):
  """Two finished members, one running without evaluation, one pending without a directory."""
  sweep_dir = str(root)
  if with_sweep_json:
    _write_json(os.path.join(sweep_dir, 'sweep.json'), {
        'config': 'configs/fashion_mnist.py', 'sweep': 'configs/sweeps/ddpm_table2.py',
        'members': [{'name': n, 'overrides': {'diffusion.loss': l, 'diffusion.mean_type': m}}
                    for n, l, m in MEMBERS]})
  a = os.path.join(sweep_dir, KL_MU)
  _member_json(sweep_dir, KL_MU, 'done', seconds=123.5)
  _write_metrics(a, _train_rows(LOSSES_A, SPS_A))
  # Rows not in step order; fid/kid/is never computed (empty cells).
  with open(os.path.join(a, 'eval_results.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['step', 'bpd', 'prior_bpd', 'decoder_bpd', 'kl_terms_bpd', 'bpd_examples',
                'fd_fmnist', 'fid', 'is', 'kid', 'num_samples', 'sampler', 'sample_steps',
                'seconds'])
    w.writerow([50, 4.0, 0.01, 1.0, 2.99, 100, 30.0, '', '', '', 64, 'ancestral', 100, 5.0])
    w.writerow([140, 3.7, 0.01, 1.0, 2.69, 100, 20.0, '', '', '', 64, 'ancestral', 100, 5.0])
    w.writerow([100, 3.5, 0.01, 1.0, 2.49, 100, 25.0, '', '', '', 64, 'ancestral', 100, 5.0])

  b = os.path.join(sweep_dir, MSE_EPS)
  _member_json(sweep_dir, MSE_EPS, 'done', seconds=99.0)
  rows = _train_rows(LOSSES_B, SPS_B)
  rows[5].update({'eval/bpd': 3.9, 'eval/is': 2.0})
  rows[11].update({'eval/bpd': 3.6, 'eval/is': 1.5})
  _write_metrics(b, rows)

  c = os.path.join(sweep_dir, MSE_MU)
  _member_json(sweep_dir, MSE_MU, 'running')
  _write_metrics(c, _train_rows([1.1, 0.9, 0.7], [0.2, 5.0, 7.0]),
                 truncated_tail='{"step": 30, "train/lo')
  return sweep_dir


def _by_name(rows):
  return {r['name']: r for r in rows}


def test_collect_numbers(tmp_path):
  rows = report.collect(make_sweep(tmp_path))
  assert [r['name'] for r in rows] == [n for n, _, _ in MEMBERS]
  r = _by_name(rows)
  a, b, c, d = r[KL_MU], r[MSE_EPS], r[MSE_MU], r[KL_EPS]
  assert [a['status'], b['status'], c['status'], d['status']] == [
      'done', 'done', 'running', 'pending']
  assert (a['diffusion.loss'], a['diffusion.mean_type']) == ('kl', 'mu')
  assert (d['diffusion.loss'], d['diffusion.mean_type']) == ('kl', 'eps')

  assert a['final_loss'] == pytest.approx(sum(LOSSES_A[-10:]) / 10)
  assert a['best_loss'] == min(LOSSES_A) == 0.48
  assert a['final_step'] == 140
  assert a['steps_per_sec'] == statistics.median(SPS_A[1:]) == 11.0
  assert a['seconds'] == 123.5
  assert a['best_bpd'] == 3.5 and a['final_bpd'] == 3.7
  assert a['final_fd_fmnist'] == 20.0 and a['best_fd_fmnist'] == 20.0
  assert a['final_is'] is None and a['best_is'] is None

  # Evaluation from metrics.jsonl; best IS is the largest.
  assert b['final_bpd'] == 3.6 and b['best_bpd'] == 3.6
  assert b['final_is'] == 1.5 and b['best_is'] == 2.0
  assert b['final_fd_fmnist'] is None
  assert b['steps_per_sec'] == statistics.median(SPS_B[1:]) == 25.0

  # Running: the half-written last line is skipped; no evaluation; pending: nothing at all.
  assert c['final_step'] == 20 and c['final_loss'] == pytest.approx(0.9)
  assert c['steps_per_sec'] == 6.0 and c['final_bpd'] is None and c['seconds'] is None
  assert all(d[k] is None for k in ('final_loss', 'best_loss', 'final_step', 'final_bpd',
                                    'steps_per_sec', 'seconds'))

  # Metric columns no member has are left out; --last changes the window.
  assert not any(k.endswith(('_fid', '_kid')) for k in rows[0])
  assert 'error' not in rows[0]
  a3 = _by_name(report.collect(tmp_path, last=3))[KL_MU]
  assert a3['final_loss'] == pytest.approx((0.48 + 0.52 + 0.51) / 3)


def test_write_report_files(tmp_path):
  sweep_dir = make_sweep(tmp_path / 'sweep')
  out = str(tmp_path / 'out')
  paths = report.write_report(sweep_dir, out)
  assert paths == {k: os.path.join(out, f) for k, f in [
      ('csv', 'report.csv'), ('md', 'report.md'), ('loss_curves', 'loss_curves.png'),
      ('metric_per_axis', 'metric_per_axis.png')]}

  md = open(paths['md']).read()
  assert f'`{sweep_dir}`' in md and 'configs/fashion_mnist.py' in md
  assert 'Lower is better: loss, bpd, fd_fmnist; higher is better: is.' in md
  table = [l for l in md.splitlines() if l.startswith('|')]
  header = [c.strip() for c in table[0].strip('|').split('|')]
  assert header[:4] == ['name', 'status', 'diffusion.loss', 'diffusion.mean_type']
  for col in ('final_loss', 'best_loss', 'final_bpd', 'best_bpd', 'final_fd_fmnist',
              'final_is', 'best_is', 'steps_per_sec', 'seconds'):
    assert col in header
  assert len(table) == 2 + len(MEMBERS)
  row_a = dict(zip(header, [c.strip() for c in table[2].strip('|').split('|')]))
  assert row_a['name'] == KL_MU and row_a['status'] == 'done'
  assert row_a['final_loss'] == f'{sum(LOSSES_A[-10:]) / 10:.4g}' == '0.606'
  assert row_a['best_bpd'] == '3.5' and row_a['final_fd_fmnist'] == '20'
  assert [l.split('|')[2].strip() for l in table[2:]] == ['done', 'done', 'running', 'pending']

  with open(paths['csv'], newline='') as f:
    back = _by_name(csv.DictReader(f))
  expected = _by_name(report.collect(sweep_dir))
  assert float(back[KL_MU]['final_loss']) == expected[KL_MU]['final_loss']
  assert float(back[KL_MU]['best_bpd']) == 3.5
  assert float(back[MSE_EPS]['best_is']) == 2.0
  assert float(back[KL_MU]['steps_per_sec']) == 11.0
  assert back[MSE_MU]['status'] == 'running' and back[MSE_MU]['final_bpd'] == ''
  assert back[KL_EPS]['status'] == 'pending' and back[KL_EPS]['final_loss'] == ''
  assert back[KL_EPS]['diffusion.mean_type'] == 'eps'

  for key in ('loss_curves', 'metric_per_axis'):
    with Image.open(paths[key]) as im:
      assert im.format == 'PNG' and im.width > 0 and im.height > 0


def test_without_sweep_json_and_failed_member(tmp_path):
  sweep_dir = make_sweep(tmp_path, with_sweep_json=False)
  _member_json(sweep_dir, KL_EPS, 'failed', seconds=3.0,
               error='Traceback ...\nFloatingPointError: NaN loss')
  os.makedirs(os.path.join(sweep_dir, 'tensorboard'))  # Not a member.
  rows = report.collect(sweep_dir)
  assert [r['name'] for r in rows] == sorted([KL_MU, MSE_EPS, MSE_MU, KL_EPS])
  r = _by_name(rows)
  assert r[KL_EPS]['status'] == 'failed' and r[KL_EPS]['final_loss'] is None
  assert r[KL_EPS]['error'].endswith('NaN loss') and r[KL_MU]['error'] is None
  assert r[MSE_MU]['diffusion.mean_type'] == 'mu'
  paths = report.write_report(sweep_dir)
  assert os.path.dirname(paths['md']) == sweep_dir
  md = open(paths['md']).read()
  assert f'- `{KL_EPS}`: FloatingPointError: NaN loss' in md


def test_nothing_varies_skips_axis_plot(tmp_path):
  sweep_dir = str(tmp_path)
  _write_json(os.path.join(sweep_dir, 'sweep.json'), {
      'members': [{'name': KL_MU, 'overrides': {'diffusion.loss': 'kl'}}]})
  _member_json(sweep_dir, KL_MU, 'running')
  paths = report.write_report(sweep_dir)
  assert 'metric_per_axis' not in paths and 'loss_curves' not in paths
  assert not os.path.exists(os.path.join(sweep_dir, 'metric_per_axis.png'))
  assert os.path.exists(paths['csv'])


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='sweep directory not found: .*missing'):
    report.collect(str(tmp_path / 'missing'))
  os.makedirs(tmp_path / 'empty' / 'not_a_member')
  with pytest.raises(ValueError, match='no sweep members found in .*empty: run python -m '
                     'ddpm_jax.sweep first'):
    report.collect(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match='--last must be >= 1'):
    report.collect(make_sweep(tmp_path / 'ok'), last=0)
  assert report.main([str(tmp_path / 'missing')]) == 1


def test_cli(tmp_path):
  sweep_dir = make_sweep(tmp_path / 'sweep')
  out = tmp_path / 'out'
  proc = subprocess.run([sys.executable, '-m', 'ddpm_jax.sweep.report', sweep_dir, f'--out={out}',
                         '--last=3'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert f'| {KL_MU} | done | kl | mu |' in proc.stdout
  for name in ('report.csv', 'report.md', 'loss_curves.png', 'metric_per_axis.png'):
    assert f'wrote {out / name}' in proc.stdout
  with open(out / 'report.csv', newline='') as f:
    back = _by_name(csv.DictReader(f))
  assert float(back[KL_MU]['final_loss']) == pytest.approx((0.48 + 0.52 + 0.51) / 3)
  proc = subprocess.run([sys.executable, '-m', 'ddpm_jax.sweep.report', str(tmp_path / 'nope')],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and 'sweep directory not found' in proc.stderr
