"""The evaluation job: bits/dim rows per checkpoint, resumable; training-time evaluation."""

import csv
import json
import os

import numpy as np
import pytest

from conftest import make_tiny_config
from ddpm_jax import evaluate, train
from ddpm_jax.evaluators import results
from ddpm_jax.evaluators.suite import Suite
from ddpm_jax.experiment import Experiment


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('eval'))
  config = make_tiny_config()
  config.train.num_steps = 2
  config.train.checkpoint_every = 1
  with config.unlocked():
    config.train.preemption_every = 0
  train.train_and_evaluate(config, workdir, progress=False)
  config.evals.bpd.update(num_examples=8, batch_size=4)
  config.evals.fd_fmnist.num_samples = 0
  config.eval.poll_seconds = 0
  config.eval.timeout_seconds = 0
  return workdir, config


def _rows(workdir):
  with open(os.path.join(workdir, results.CSV_NAME)) as f:
    return list(csv.DictReader(f))


def test_eval_job_evaluates_each_checkpoint_once_and_resumes(trained, capsys):
  workdir, config = trained
  exp = Experiment.from_config(config)
  rows = evaluate.eval_job(config, workdir, exp, progress=False)
  assert [r['step'] for r in rows] == [1, 2]
  for r in rows:
    assert r['bpd_examples'] == 8
    assert r['bpd'] > 0 and np.isfinite(r['bpd'])
    assert r['bpd'] == pytest.approx(r['prior_bpd'] + r['decoder_bpd'] + r['kl_terms_bpd'])
  assert 'protocol: EMA params; bits/dim on fashion_mnist/test' in capsys.readouterr().out
  assert [r['step'] for r in _rows(workdir)] == ['1', '2']
  assert json.load(open(os.path.join(workdir, evaluate.STATE_NAME))) == {'done': [1, 2]}
  # Per-term bits/dim of each step: T terms (L_0 .. L_{T-1}) that add up to the row's total.
  with np.load(os.path.join(workdir, 'bpd_terms_step00000002.npz')) as f:
    terms = f['terms']
    assert terms.shape == (config.diffusion.num_timesteps,) and np.all(terms >= 0)
    assert terms.sum() + float(f['prior']) == pytest.approx(rows[1]['bpd'], rel=1e-5)
  from PIL import Image
  assert Image.open(os.path.join(workdir, 'bpd_terms_step00000002.png')).size == (700, 400)
  # A second run (e.g. after a kill) evaluates nothing again.
  assert evaluate.eval_job(config, workdir, exp, progress=False) == []
  assert len(_rows(workdir)) == 2


def test_training_time_evaluation_writes_csv_and_scalars(tmp_path):
  config = make_tiny_config()
  config.train.num_steps = 2
  config.evals.bpd.update(every=2, train_examples=4, batch_size=4)
  train.train_and_evaluate(config, str(tmp_path), progress=False)
  (row,) = _rows(str(tmp_path))
  assert row['step'] == '2' and row['bpd_examples'] == '4' and float(row['bpd']) > 0
  lines = [json.loads(l) for l in open(os.path.join(str(tmp_path), 'metrics.jsonl'))]
  assert any('eval/bpd' in l and l['step'] == 2 for l in lines)
  # The per-term bits/dim, as every evaluation writes them.
  with np.load(os.path.join(str(tmp_path), 'bpd_terms_step00000002.npz')) as f:
    assert f['terms'].sum() + float(f['prior']) == pytest.approx(float(row['bpd']), rel=1e-5)


@pytest.mark.parametrize('weights', ['missing.pth', 'garbage.pth'])
def test_bad_inception_weights_stop_the_eval_job_before_any_work(trained, tmp_path, weights,
                                                                 monkeypatch):
  """They used to be read only after the bits/dim, the samples and the reference statistics of
  the first checkpoint: hours with the defaults."""
  workdir, config = trained
  config = config.copy_and_resolve_references()
  (tmp_path / 'garbage.pth').write_bytes(b'not a torch file' * 100)
  config.evals.inception.update(weights=str(tmp_path / weights), num_samples=4)
  work = []
  monkeypatch.setattr(Suite, 'evaluate', lambda *a, **k: work.append(a) or {})
  with pytest.raises((FileNotFoundError, ValueError), match='inception|Inception'):
    evaluate.eval_job(config, workdir, Experiment.from_config(config), progress=False)
  assert work == []
