"""The evaluators (`ddpm_jax.evaluators`): FD-FMNIST and Inception metrics through a `Suite`,
per-evaluator schedules, reference caches, and the results writer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from conftest import make_tiny_config
from ddpm_jax import config_checks, data
from ddpm_jax.errors import ConfigError
from ddpm_jax.evaluators import common, results, suite as suite_lib
from ddpm_jax.experiment import Experiment
from ddpm_jax.metrics import fid_is_kid, inception
from torch_pickle_writer import flax_to_torch_state_dict


def _config32():
  """The tiny config at Fashion-MNIST's 32x32x1, where FD-FMNIST applies."""
  config = make_tiny_config(image_size=32)
  config.model.attn_resolutions = (16,)
  return config


def _suite(config, workdir, images, job=True):
  """A Suite whose samples are `images` (no sampling)."""
  s = suite_lib.Suite(config, Experiment.from_config(config), str(workdir), job=job,
                      progress=False)
  s.samples = lambda params, num: images[:num]
  return s


def test_fd_fmnist_separates_real_images_from_noise(tmp_path):
  config = _config32()
  config.evals.fd_fmnist.update(num_samples=2000, reference_examples=5000)
  config.evals.bpd.num_examples = 0
  real = data.load_split(config.data, 'test', max_examples=2000)
  noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
  fd_real = _suite(config, tmp_path, real).evaluate(None, 0)['fd_fmnist']
  cache = os.path.join(str(tmp_path), 'fd_fmnist_ref_train.npz')
  with np.load(cache) as f:
    assert f['mu'].shape == (128,) and int(f['num']) == 5000
  fd_noise = _suite(config, tmp_path, noise).evaluate(None, 0)['fd_fmnist']
  assert 0 <= fd_real < 0.05 * fd_noise


def test_fid_is_kid_wiring_with_random_inception_weights(tmp_path):
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 75, 75, 3), jnp.uint8))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, np.float32) if 'var' in str(path[-1]) else
                       rng.normal(0, 0.05, s.shape).astype(np.float32)), shapes)
  weights = str(tmp_path / 'random_inception.npz')
  np.savez(weights, **flax_to_torch_state_dict(variables))
  config = _config32()
  config.evals.inception.update(weights=weights, reference_examples=6, batch_size=6,
                                num_samples=6)
  config.evals.fd_fmnist.num_samples = 4
  config.evals.bpd.num_examples = 0
  samples = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
  suite = _suite(config, tmp_path, samples)
  suite.check_inputs()
  row = suite.evaluate(None, 7)
  assert {'fd_fmnist', 'fid', 'is', 'kid'} <= set(row)
  assert row['num_samples'] == 6 and row['sample_steps'] == 100 and row['step'] == 7
  assert all(np.isfinite(row[k]) for k in ('fd_fmnist', 'fid', 'is', 'kid'))
  assert row['is'] >= 1.0  # (FID of 6 vs 6 samples in 2048-d is degenerate: only finite.)
  with np.load(os.path.join(str(tmp_path), 'inception_ref_train.npz')) as f:
    ref = f['features']
  feats, logits = inception.extract_features(variables, samples, 6)
  assert row['fid'] == pytest.approx(fid_is_kid.frechet_distance(
      *fid_is_kid.feature_statistics(feats), *fid_is_kid.feature_statistics(ref)), rel=1e-4)
  assert row['is'] == pytest.approx(fid_is_kid.inception_score(logits, splits=6)[0], rel=1e-4)
  assert suite.protocol().startswith('protocol: EMA params; fd_fmnist: 4 samples (ancestral, '
                                     '100 steps, uint8-quantised)')
  assert '; inception: 6 samples' in suite.protocol()
  config.evals.inception.weights = str(tmp_path / 'missing.pth')
  with pytest.raises(FileNotFoundError, match='pytorch-fid'):
    _suite(config, tmp_path, samples).check_inputs()
  (tmp_path / 'bad.pth').write_bytes(b'not weights')
  config.evals.inception.weights = str(tmp_path / 'bad.pth')
  with pytest.raises(ConfigError, match=r"config\.evals\.inception\.weights='.*bad\.pth' is not "
                                        'the FID Inception weights: ValueError'):
    _suite(config, tmp_path, samples).check_inputs()


def test_each_evaluator_has_its_own_schedule_and_sizes(tmp_path):
  config = _config32()
  config.evals.bpd.update(every=2, train_examples=8, num_examples=16)
  config.evals.fd_fmnist.update(every=3, train_samples=5, num_samples=7)
  exp = Experiment.from_config(config)
  train = suite_lib.Suite(config, exp, str(tmp_path), job=False, scheduled=True)
  assert [(e.name, e.num) for e in train.evaluators] == [('bpd', 8), ('fd_fmnist', 5)]
  assert [[e.name for e in train.due(step)] for step in (1, 2, 3, 4, 6)] == [
      [], ['bpd'], ['fd_fmnist'], ['bpd'], ['bpd', 'fd_fmnist']]
  assert [e.name for e in train.due(5, n=2)] == ['bpd']  # Steps 4 and 5 in one dispatch.
  assert [e.name for e in train.due(5, final=True)] == ['bpd', 'fd_fmnist']
  job = suite_lib.Suite(config, exp, str(tmp_path), job=True)
  assert [(e.name, e.num) for e in job.evaluators] == [('bpd', 16), ('fd_fmnist', 7)]
  config.evals.fd_fmnist.every = 0  # Not during training; still in the job and a final eval.
  assert [e.name for e in suite_lib.Suite(config, exp, '', job=False, scheduled=True)
          .evaluators] == ['bpd']
  assert len(suite_lib.Suite(config, exp, '', job=False).evaluators) == 2
  config.data.image_size = 16  # FD-FMNIST needs 32x32x1; Inception needs weights.
  assert [e.name for e in suite_lib.Suite(config, exp, '', job=True).evaluators] == ['bpd']


def test_config_checks_name_the_evaluator_key():
  assert set(suite_lib.TYPES) == {s.type for s in default.get_config().evals.values()}
  config = make_tiny_config()
  config.evals.bpd.type = 'bdp'
  with pytest.raises(ConfigError, match=r"config\.evals\.bpd\.type='bdp' is invalid"):
    config_checks.validate(config)
  config.evals.bpd.type = 'fd_fmnist'
  with pytest.raises(ConfigError, match=r"config\.evals\.bpd=\[.*\] is invalid: expected the "
                                        r"fields of type 'fd_fmnist': every, num_samples"):
    config_checks.validate(config)
  config = make_tiny_config()
  config.evals.inception.type = 'fd_fmnist'
  with pytest.raises(ConfigError, match=r"config\.evals\.inception\.type='fd_fmnist' is invalid: "
                                        r'expected a type no other evaluator has \(config\.evals\.'
                                        r'fd_fmnist has it'):
    config_checks.validate(config)
  config = make_tiny_config()
  config.evals.inception.is_splits = 0
  with pytest.raises(ConfigError, match=r'config\.evals\.inception\.is_splits=0'):
    config_checks.validate(config)
  config = make_tiny_config()
  config.evals.bpd.every = -1
  with pytest.raises(ConfigError, match=r'config\.evals\.bpd\.every=-1'):
    config_checks.validate(config)


def test_results_record_writes_csv_scalars_and_bpd_terms(tmp_path):
  written = []

  class Writer:
    def write_scalars(self, step, scalars):
      written.append((step, scalars))

  terms = np.array([0.5, 0.25, 0.125])
  row = {'step': 3, 'bpd': 1.0, 'prior_bpd': 0.125, 'decoder_bpd': 0.5, 'kl_terms_bpd': 0.375,
         'bpd_examples': 4, 'bpd_terms': terms, 'fd_fmnist': 2.5, 'seconds': 1.5}
  line = results.record(str(tmp_path), row, Writer())
  assert line == 'step 3: eval bpd=1, prior_bpd=0.125, decoder_bpd=0.5, kl_terms_bpd=0.375, ' \
                 'fd_fmnist=2.5'
  assert written == [(3, {'eval/bpd': 1.0, 'eval/prior_bpd': 0.125, 'eval/decoder_bpd': 0.5,
                          'eval/kl_terms_bpd': 0.375, 'eval/fd_fmnist': 2.5})]
  assert results.read_csv(str(tmp_path / results.CSV_NAME)) == [
      {'step': 3, 'bpd': 1.0, 'fd_fmnist': 2.5, 'fid': None, 'is': None, 'kid': None}]
  assert results.evaluated_steps(str(tmp_path)) == {3}
  with np.load(str(tmp_path / 'bpd_terms_step00000003.npz')) as f:
    np.testing.assert_array_equal(f['terms'], terms)
  assert os.path.exists(str(tmp_path / 'bpd_terms_step00000003.png'))


def test_cached_computes_once(tmp_path):
  calls = []
  path = str(tmp_path / 'ref.npz')
  compute = lambda: calls.append(1) or {'mu': np.arange(3.0)}  # pylint: disable=g-long-lambda
  first, second = common.cached(path, compute), common.cached(path, compute)
  assert calls == [1]
  np.testing.assert_array_equal(first['mu'], second['mu'])
