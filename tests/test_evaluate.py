"""The evaluation job: bits/dim rows per checkpoint, resumable, and the FD-FMNIST metric."""

import csv
import json
import os

import numpy as np
import pytest

from conftest import make_tiny_config
from ddpm_jax import data, evaluate, train
from ddpm_jax.experiment import Experiment
from torch_pickle_writer import flax_to_torch_state_dict


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('eval'))
  config = make_tiny_config()
  config.train.num_steps = 2
  config.train.checkpoint_every = 1
  with config.unlocked():
    config.train.preemption_every = 0
  train.train_and_evaluate(config, workdir, progress=False)
  config.eval.bpd_num_examples = 8
  config.eval.bpd_batch_size = 4
  config.eval.num_samples = 0
  config.eval.poll_seconds = 0
  config.eval.timeout_seconds = 0
  return workdir, config


def _rows(workdir):
  with open(os.path.join(workdir, evaluate.CSV_NAME)) as f:
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


def test_fd_fmnist_separates_real_images_from_noise(tmp_path):
  config = make_tiny_config(image_size=32)
  config.eval.reference_examples = 5000
  ev = evaluate.Evaluator.__new__(evaluate.Evaluator)
  ev.config, ev.workdir, ev._fmnist = config, str(tmp_path), None
  real = data.load_split(config.data, 'test', max_examples=2000)
  noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
  fd_real = ev.sample_quality(real)['fd_fmnist']
  fd_noise = ev.sample_quality(noise)['fd_fmnist']
  assert os.path.exists(os.path.join(str(tmp_path), 'fd_fmnist_ref_train.npz'))
  assert 0 <= fd_real < 0.05 * fd_noise


def test_fid_is_kid_wiring_with_random_inception_weights(tmp_path):
  import jax
  import jax.numpy as jnp
  from ddpm_jax.metrics import inception
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 75, 75, 3), jnp.uint8))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, np.float32) if 'var' in str(path[-1]) else
                       rng.normal(0, 0.05, s.shape).astype(np.float32)), shapes)
  weights = str(tmp_path / 'random_inception.npz')
  np.savez(weights, **flax_to_torch_state_dict(variables))
  config = make_tiny_config(image_size=32)
  config.eval.inception_weights = weights
  config.eval.reference_examples = 6
  config.eval.inception_batch_size = 6
  ev = evaluate.Evaluator.__new__(evaluate.Evaluator)
  ev.config, ev.workdir, ev._fmnist = config, str(tmp_path), None
  samples = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
  out = ev.sample_quality(samples)
  assert set(out) == {'fd_fmnist', 'fid', 'is', 'kid'}
  assert all(np.isfinite(v) for v in out.values())
  assert out['is'] >= 1.0  # (FID of 6 vs 6 samples in 2048-d is degenerate: only finite.)
  assert os.path.exists(os.path.join(str(tmp_path), 'inception_ref_train.npz'))
  config.eval.inception_weights = str(tmp_path / 'missing.pth')
  del ev._inception
  with pytest.raises(FileNotFoundError, match='pytorch-fid'):
    ev.sample_quality(samples)


def test_training_time_evaluation_writes_csv_and_scalars(tmp_path):
  config = make_tiny_config()
  config.train.num_steps = 2
  config.eval.eval_every = 2
  config.eval.train_bpd_examples = 4
  config.eval.bpd_batch_size = 4
  config.eval.train_num_samples = 0
  train.train_and_evaluate(config, str(tmp_path), progress=False)
  (row,) = _rows(str(tmp_path))
  assert row['step'] == '2' and row['bpd_examples'] == '4' and float(row['bpd']) > 0
  lines = [json.loads(l) for l in open(os.path.join(str(tmp_path), 'metrics.jsonl'))]
  assert any('eval/bpd' in l and l['step'] == 2 for l in lines)


@pytest.mark.parametrize('weights', ['missing.pth', 'garbage.pth'])
def test_bad_inception_weights_stop_the_eval_job_before_any_work(trained, tmp_path, weights,
                                                                 monkeypatch):
  """They used to be read only after the bits/dim, the samples and the reference statistics of
  the first checkpoint: hours with the defaults."""
  workdir, config = trained
  config = config.copy_and_resolve_references()
  (tmp_path / 'garbage.pth').write_bytes(b'not a torch file' * 100)
  config.eval.inception_weights = str(tmp_path / weights)
  config.eval.num_samples = 4
  work = []
  monkeypatch.setattr(evaluate.Evaluator, 'evaluate', lambda *a, **k: work.append(a) or {})
  with pytest.raises((FileNotFoundError, ValueError), match='inception|Inception'):
    evaluate.eval_job(config, workdir, Experiment.from_config(config), progress=False)
  assert work == []
