"""Sweeps: expansion (product, zip, nested keys), validation, names, and the runner's skip and
resume of finished and interrupted members."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_tiny_config
from configs import cifar10, fashion_mnist
from ddpm_jax import train
from ddpm_jax.evaluators import suite as suite_lib
from ddpm_jax.sweep import report, run as sweep, spec as sweeps
from ddpm_jax.sweep.spec import SweepError, apply_overrides, name_members, product, zip_axes


def test_product_multiplies_axes_in_order():
  runs = product({'a.x': [1, 2]}, {'b.y': ['p', 'q', 'r']})
  assert len(runs) == 6
  assert runs[:3] == [{'a.x': 1, 'b.y': 'p'}, {'a.x': 1, 'b.y': 'q'}, {'a.x': 1, 'b.y': 'r'}]
  assert runs[-1] == {'a.x': 2, 'b.y': 'r'}
  # Several keys in one mapping multiply too; a list of runs is one axis.
  assert product({'a': [1, 2], 'b': [3, 4]}) == product({'a': [1, 2]}, {'b': [3, 4]})
  assert product([{'a': 1}, {'a': 2}], {'b': [0]}) == [{'a': 1, 'b': 0}, {'a': 2, 'b': 0}]


def test_zip_steps_keys_together_and_nests():
  z = zip_axes({'diffusion.loss': ['kl', 'mse'], 'diffusion.var_type': ['learned', 'fixedlarge']})
  assert z == [{'diffusion.loss': 'kl', 'diffusion.var_type': 'learned'},
               {'diffusion.loss': 'mse', 'diffusion.var_type': 'fixedlarge'}]
  runs = product({'model': {'ch': [32, 64]}}, z)  # A nested group flattens to dotted keys.
  assert len(runs) == 4 and runs[0] == {'model.ch': 32, 'diffusion.loss': 'kl',
                                        'diffusion.var_type': 'learned'}
  assert sweeps.flatten({'model': {'ch_mult': (1, 2)}}) == {'model.ch_mult': (1, 2)}


@pytest.mark.parametrize('make, match', [
    (lambda: zip_axes({'a': [1, 2], 'b': [1]}), 'one length'),
    (lambda: product({'a': []}), 'non-empty list'),
    (lambda: product({'a': 'xy'}), 'non-empty list'),
    (lambda: product({'a': [1]}, {'a': [2]}), 'two axes'),
    (lambda: product(), 'at least one'),
])
def test_malformed_sweeps_are_clear_errors(make, match):
  with pytest.raises(SweepError, match=match):
    make()


def test_overrides_are_checked_against_the_config():
  base = fashion_mnist.get_config()
  c = apply_overrides(base, {'diffusion.loss': 'kl', 'model.ch_mult': [1, 2], 'optim.lr': 1e-4})
  assert (c.diffusion.loss, c.model.ch_mult, c.optim.lr) == ('kl', (1, 2), 1e-4)
  assert base.diffusion.loss == 'mse'  # The base config is untouched.
  with pytest.raises(SweepError, match=r"Unknown config key 'diffusion.los'.*diffusion.loss"):
    apply_overrides(base, {'diffusion.los': 'kl'})
  with pytest.raises(SweepError, match="Unknown config key 'nope.x'"):
    apply_overrides(base, {'nope.x': 1})
  with pytest.raises(SweepError, match="Bad value 'many' for 'train.num_steps'"):
    apply_overrides(base, {'train.num_steps': 'many'})


def test_names_list_only_the_varying_keys():
  runs = product({'diffusion.mean_type': ['mu', 'eps'], 'train.seed': [0]},
                 {'optim.lr': [1e-3, 2e-4]})
  names = [n for n, _ in name_members(runs)]
  assert names == ['mean_type=mu,lr=0.001', 'mean_type=mu,lr=0.0002',
                   'mean_type=eps,lr=0.001', 'mean_type=eps,lr=0.0002']
  # Keys sharing their last component are named in full; one run is 'base'.
  clash = name_members([{'train.seed': 0, 'eval.seed': 1}, {'train.seed': 1, 'eval.seed': 1}])
  assert [n for n, _ in clash] == ['seed=0', 'seed=1']
  clash = name_members([{'train.seed': 0, 'eval.seed': 1}, {'train.seed': 1, 'eval.seed': 0}])
  assert [n for n, _ in clash] == ['train.seed=0,eval.seed=1', 'train.seed=1,eval.seed=0']
  assert name_members([{'model.ch_mult': (1, 2, 2)}])[0][0] == 'base'
  assert sweeps.format_value((1, 2, 2)) == '1-2-2' and sweeps.format_value('a/b c') == 'a_b_c'


def test_shipped_sweeps_expand_and_validate():
  table2 = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/ddpm_table2.py'))
  combos = {(r['diffusion.mean_type'], r['diffusion.loss'], r['diffusion.var_type'])
            for r in table2}
  assert combos == {(m, l, v) for m in ('mu', 'eps')
                    for l, v in (('kl', 'learned'), ('kl', 'fixedlarge'), ('mse', 'fixedlarge'))}
  schedules = sweeps.load_sweep(os.path.join(ROOT, 'configs/sweeps/schedules.py'))
  assert len(schedules) == 9
  for config in (cifar10.get_config(), fashion_mnist.get_config()):
    for path in ('ddpm_table2.py', 'schedules.py'):
      planned = sweep.plan(config, os.path.join(ROOT, 'configs/sweeps', path))
      assert len({n for n, _, _ in planned}) == len(planned)
  with pytest.raises(SweepError, match='No sweep file'):
    sweeps.load_sweep('configs/sweeps/missing.py')


def test_sweep_file_with_a_typo_fails_before_anything_runs(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text("def get_sweep():\n  return [{'diffusion.loss': 'kl'}, {'diffusion.los': 'x'}]\n")
  with pytest.raises(SweepError, match='diffusion.los'):
    sweep.run_sweep(make_tiny_config(), str(path), str(tmp_path / 'runs'), progress=False)
  assert not os.path.exists(tmp_path / 'runs')
  path.write_text("def get_sweep():\n  return [{'a': 1}, {'a': 1}]\n")
  with pytest.raises(SweepError, match='the same'):
    sweeps.load_sweep(str(path))


def _tiny_sweep(tmp_path):
  path = tmp_path / 'two.py'
  path.write_text("from ddpm_jax.sweep.spec import product\n\n"
                  "def get_sweep():\n"
                  "  return product({'diffusion.loss': ['kl', 'hybrid'],\n"
                  "                  'diffusion.var_type': ['learned_range']})\n")
  config = make_tiny_config()
  config.evals.bpd.train_examples = 8  # The final evaluation: bits/dim only (fast).
  return str(path), config


def test_runner_trains_evaluates_skips_and_resumes(tmp_path, monkeypatch):
  sweep_path, config = _tiny_sweep(tmp_path)
  sweep_dir = str(tmp_path / 'runs')
  # An interrupted member: 'loss=hybrid' stopped at step 2 of 4 (as if SIGTERM'd).
  planned = {n: c for n, _, c in sweep.plan(config, sweep_path)}
  assert sorted(planned) == ['loss=hybrid', 'loss=kl']
  short = planned['loss=hybrid'].copy_and_resolve_references()
  short.train.num_steps = 2
  train.train_and_evaluate(short, os.path.join(sweep_dir, 'loss=hybrid'), progress=False)
  sweep._write_json(os.path.join(sweep_dir, 'loss=hybrid', report.MEMBER_JSON),
                    {'name': 'loss=hybrid', 'status': 'interrupted', 'seconds': 1.0})

  calls = []
  real = train.train_and_evaluate
  monkeypatch.setattr(train, 'train_and_evaluate',
                      lambda c, w, **kw: calls.append(w) or real(c, w, **kw))
  statuses = sweep.run_sweep(config, sweep_path, sweep_dir, progress=False)
  assert statuses == {'loss=kl': 'done', 'loss=hybrid': 'done'}
  listing = json.load(open(os.path.join(sweep_dir, report.SWEEP_JSON)))
  assert [m['name'] for m in listing['members']] == ['loss=kl', 'loss=hybrid']
  for name in statuses:
    record = report.member_state(os.path.join(sweep_dir, name))
    assert record['status'] == 'done' and record['final_step'] == 4
    assert record['overrides']['diffusion.loss'] == name.split('=')[1]
    rows = list(csv.DictReader(open(os.path.join(sweep_dir, name, 'eval_results.csv'))))
    assert [int(r['step']) for r in rows] == [4] and float(rows[0]['bpd']) > 0
  # The interrupted member resumed from its step-2 checkpoint.
  lines = [json.loads(l) for l in open(os.path.join(sweep_dir, 'loss=hybrid', 'metrics.jsonl'))]
  assert [l['step'] for l in lines if 'train/loss' in l] == [1, 2, 3, 4]
  assert [l['step'] for l in lines if 'eval/bpd' in l] == [4]  # The final evaluation's scalars.
  assert report.member_state(os.path.join(sweep_dir, 'loss=hybrid'))['attempts'] == 1

  # Re-running skips both; selecting by name or index works; an unknown member is an error.
  calls.clear()
  assert sweep.run_sweep(config, sweep_path, sweep_dir, progress=False) == {
      'loss=kl': 'skipped', 'loss=hybrid': 'skipped'}
  assert sweep.run_sweep(config, sweep_path, sweep_dir, members=['1'], progress=False) == {
      'loss=hybrid': 'skipped'}
  assert calls == []
  with pytest.raises(SweepError, match='No member'):
    sweep.run_sweep(config, sweep_path, sweep_dir, members=['loss=mse'], progress=False)


def test_a_diverged_member_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
  sweep_path, config = _tiny_sweep(tmp_path)
  real = train.train_and_evaluate

  def fake(c, w, **kw):
    if c.diffusion.loss == 'kl':
      raise train.NonFiniteLossError('Loss is nan at step 3.')
    return real(c, w, **kw)
  monkeypatch.setattr(train, 'train_and_evaluate', fake)
  statuses = sweep.run_sweep(config, sweep_path, str(tmp_path), final_eval=False,
                             progress=False)
  assert statuses == {'loss=kl': 'failed', 'loss=hybrid': 'done'}
  record = report.member_state(str(tmp_path / 'loss=kl'))
  assert record['error'].startswith('diverged: Loss is nan')


def test_launchers_print_one_command_per_member(tmp_path):
  sweep_path, _ = _tiny_sweep(tmp_path)
  names = ['loss=mse', 'loss=hybrid']
  lines = sweep.commands('print', names, 'configs/fashion_mnist.py', sweep_path, 'runs/s',
                         ['--config.train.num_steps=10'])
  assert lines[1] == ('python -m ddpm_jax.sweep --config=configs/fashion_mnist.py '
                      f'--workdir=runs/s --sweep={sweep_path} --member=loss=hybrid '
                      '--config.train.num_steps=10')
  slurm = sweep.commands('slurm', names, 'c.py', sweep_path, 'runs/s')
  assert slurm[0].startswith('DDPM_MODULE=ddpm_jax.sweep sbatch --job-name=sweep-loss=mse '
                             'launch/slurm_gpu.sbatch c.py runs/s')
  tpu = sweep.commands('tpu', names, 'c.py', sweep_path, 'runs/s')
  assert tpu[0].startswith('DDPM_MODULE=ddpm_jax.sweep bash launch/tpu_pod.sh train c.py runs/s')
  # The CLI prints them without running anything.
  out = subprocess.run(
      [sys.executable, '-m', 'ddpm_jax.sweep', '--config=configs/fashion_mnist.py',
       f'--sweep={ROOT}/configs/sweeps/ddpm_table2.py', '--workdir=runs/t2', '--launcher=print',
       '--config.train.num_steps=50'], cwd=ROOT, capture_output=True, text=True, check=True)
  printed = out.stdout.strip().splitlines()
  assert len(printed) == 6 and all('--config.train.num_steps=50' in l for l in printed)
  assert '--member=mean_type=mu,loss=kl,var_type=learned' in printed[0]


def test_report_of_a_real_tiny_sweep(tmp_path):
  """The runner's outputs are what `ddpm_jax.sweep.report` reads: one row per member, with its
  overrides, final loss and final bits/dim."""
  sweep_path, config = _tiny_sweep(tmp_path)
  config.train.num_steps = 2
  sweep_dir = str(tmp_path / 'runs')
  sweep.run_sweep(config, sweep_path, sweep_dir, progress=False)
  rows = {r['name']: r for r in report.collect(sweep_dir)}
  assert sorted(rows) == ['loss=hybrid', 'loss=kl']
  for name, row in rows.items():
    assert row['status'] == 'done' and row['final_step'] == 2
    assert row['diffusion.loss'] == name.split('=')[1]
    metrics = [json.loads(l) for l in open(os.path.join(sweep_dir, name, 'metrics.jsonl'))]
    losses = [m['train/loss'] for m in metrics if 'train/loss' in m]
    assert len(losses) == 2 and row['final_loss'] == pytest.approx(sum(losses) / 2)
    ev = list(csv.DictReader(open(os.path.join(sweep_dir, name, 'eval_results.csv'))))
    assert row['final_bpd'] == pytest.approx(float(ev[-1]['bpd']))
  paths = report.write_report(sweep_dir)
  assert os.path.exists(paths['md']) and os.path.exists(paths['loss_curves'])


class _Signalled(Exception):
  pass


def test_sigterm_in_the_final_evaluation_marks_the_member_interrupted(tmp_path, monkeypatch):
  """SIGTERM while a member's final evaluation runs used to kill the sweep (rc 143) with the
  member left `running`; it is now recorded as interrupted, the sweep stops, and a rerun
  evaluates it and marks it done."""
  sweep_path, config = _tiny_sweep(tmp_path)
  config.train.num_steps = 2
  sweep_dir = str(tmp_path / 'runs')

  def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # The signal arrives during the evaluation.
    raise AssertionError('SIGTERM did not interrupt the final evaluation')

  def raise_signalled(signum, frame):  # Instead of dying, should the runner not handle it.
    raise _Signalled()

  previous = signal.signal(signal.SIGTERM, raise_signalled)
  try:
    monkeypatch.setattr(suite_lib.Suite, 'evaluate', terminated)
    statuses = sweep.run_sweep(config, sweep_path, sweep_dir, progress=False)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert statuses == {'loss=kl': 'interrupted'}  # The sweep stopped after it.
  record = report.member_state(os.path.join(sweep_dir, 'loss=kl'))
  assert record['status'] == 'interrupted' and 'SIGTERM' in record['error']
  monkeypatch.undo()
  assert sweep.run_sweep(config, sweep_path, sweep_dir, members=['loss=kl'],
                         progress=False) == {'loss=kl': 'done'}
  rows = list(csv.DictReader(open(os.path.join(sweep_dir, 'loss=kl', 'eval_results.csv'))))
  assert [int(r['step']) for r in rows] == [2]
