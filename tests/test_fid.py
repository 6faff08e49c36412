"""`python -m ddpm_jax.fid`: samples as an .npz or a folder, references as images, statistics
or a folder; FD-FMNIST features and Inception with random weights."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from conftest import ROOT
from ddpm_jax import data, fid, image_files
from ddpm_jax.metrics import fmnist_classifier as fc
from ddpm_jax.metrics import fid_is_kid, inception
from test_inception import random_variables  # pylint: disable=unused-import  (a fixture)
from torch_pickle_writer import flax_to_torch_state_dict


def _images(seed, n, size=32, channels=1):
  rng = np.random.default_rng(seed)
  # Blobs of different brightness, so that features vary between images and sets.
  base = rng.integers(0, 256, (n, 1, 1, channels)) * np.ones((1, size, size, 1))
  noise = rng.normal(0, 40, (n, size, size, channels))
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def _folder(path, x):
  for i, im in enumerate(x):
    image_files.save_png(str(path / f'{i:03d}.png'), im)
  return str(path)


def test_npz_folder_and_statistics_give_the_same_fd_fmnist(tmp_path):
  samples, reference = _images(0, 40), _images(1, 30)
  npz = image_files.save_npz(str(tmp_path / 's.npz'), samples, labels=np.arange(40) % 10)
  with np.load(npz) as f:  # The ADM evaluator's layout.
    assert f.files == ['arr_0', 'arr_1'] and f['arr_0'].dtype == np.uint8
  with pytest.raises(ValueError, match='3 labels for 40 images'):
    image_files.save_npz(str(tmp_path / 'bad.npz'), samples, labels=np.arange(3))
  sample_dir = _folder(tmp_path / 'samples', samples)
  ref_dir = _folder(tmp_path / 'reference', reference)
  stats = str(tmp_path / 'stats' / 'ref.npz')

  r1, protocol = fid.evaluate(npz, ref_dir, features='fmnist', save_stats=stats)
  r2, _ = fid.evaluate(sample_dir, ref_dir, features='fmnist')
  r3, protocol3 = fid.evaluate(npz, stats, features='fmnist')
  params = fc.load_params()
  want = fid_is_kid.frechet_distance(
      *fid_is_kid.feature_statistics(fc.features_and_logits(params, samples)[0]),
      *fid_is_kid.feature_statistics(fc.features_and_logits(params, reference)[0]))
  assert want > 1
  assert r1 == {'fd_fmnist': want, 'num_samples': 40, 'num_reference': 30}
  assert r2['fd_fmnist'] == want  # PNG round trip is lossless.
  assert r3['fd_fmnist'] == pytest.approx(want, rel=1e-9) and r3['num_reference'] is None
  with np.load(stats) as f:  # pytorch-fid's --save-stats layout.
    assert sorted(f.files) == ['mu', 'sigma'] and f['sigma'].shape == (128, 128)
  assert 'samples: 40 uint8 images from' in protocol and 'reference: folder' in protocol
  assert 'reference: statistics' in protocol3
  same, _ = fid.evaluate(npz, sample_dir, features='fmnist')
  assert abs(same['fd_fmnist']) < 1e-4  # Identical sets (sqrtm rounding of a rank-40 sigma).
  # A dataset split as the reference, read as training reads it.
  data, protocol = fid.evaluate(npz, 'fashion_mnist:test', features='fmnist',
                                reference_examples=64)
  assert data['num_reference'] == 64 and 'reference: fashion_mnist/test (64 images)' in protocol
  assert data['fd_fmnist'] > 1


def test_a_dataset_split_as_samples_is_real_datas_floor(tmp_path):
  # The first 48 test images as SAMPLES, read as training reads them: the same distance as
  # their pixels written to an .npz.
  cfg = default.get_config().data
  cfg.update(dict(dataset='fashion_mnist', image_size=32, channels=1))
  test = data.load_split(cfg, 'test', max_examples=48)
  npz = image_files.save_npz(str(tmp_path / 'test48.npz'), test)
  ref = image_files.save_npz(str(tmp_path / 'ref.npz'), _images(2, 40))
  got, protocol = fid.evaluate('fashion_mnist:test', ref, features='fmnist', num_samples=48)
  want, _ = fid.evaluate(npz, ref, features='fmnist')
  assert got == want and got['num_samples'] == 48
  assert 'samples: 48 uint8 images from fashion_mnist/test (48 images)' in protocol
  first, protocol = fid.evaluate(npz, ref, features='fmnist', num_samples=20)
  assert first['num_samples'] == 20 and 'the first 20' in protocol
  with pytest.raises(fid.InputError, match='holds 48 images, fewer than --num_samples=49'):
    fid.evaluate(npz, ref, features='fmnist', num_samples=49)
  with pytest.raises(fid.InputError, match='SAMPLES no_such:test is not a file or folder'):
    fid.evaluate('no_such:test', ref, features='fmnist')


def test_inception_metrics_with_random_weights(tmp_path, random_variables, monkeypatch):
  # The Fréchet distance of 2048-d statistics costs ~40 s of scipy's sqrtm here; its maths is
  # tested in test_fid_is_kid.py. Here: that it gets the right statistics.
  calls = []
  monkeypatch.setattr(fid_is_kid, 'frechet_distance',
                      lambda *args: calls.append(args) or 12.5)
  weights = str(tmp_path / 'inception.npz')
  np.savez(weights, **flax_to_torch_state_dict(random_variables))
  samples, reference = _images(2, 4, channels=3), _images(3, 3, channels=3)
  npz = image_files.save_npz(str(tmp_path / 's.npz'), samples)
  ref = image_files.save_npz(str(tmp_path / 'r.npz'), reference)
  result, protocol = fid.evaluate(npz, ref, inception_weights=weights, batch_size=2)
  feats, logits = inception.extract_features(random_variables, samples, batch_size=2)
  ref_feats, _ = inception.extract_features(random_variables, reference, batch_size=2)
  (mu, sigma, mu_ref, sigma_ref), = calls
  for got, want in zip((mu, sigma, mu_ref, sigma_ref), fid_is_kid.feature_statistics(feats)
                       + fid_is_kid.feature_statistics(ref_feats)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert mu.shape == (2048,) and np.abs(mu - mu_ref).max() > 1e-3
  assert set(result) == {'fid', 'is', 'is_std', 'kid', 'kid_std', 'num_samples',
                         'num_reference'} and result['fid'] == 12.5
  want_is = fid_is_kid.inception_score(logits, splits=4)
  assert (result['is'], result['is_std']) == pytest.approx(want_is, rel=1e-6)
  assert result['is'] >= 1
  want_kid = fid_is_kid.kernel_inception_distance(feats, ref_feats, subset_size=1000)
  assert (result['kid'], result['kid_std']) == pytest.approx(want_kid, rel=1e-6)
  assert "pytorch-fid's FID Inception-v3" in protocol and 'IS over 4 splits' in protocol
  # Statistics of another network's features are refused before any feature is computed.
  np.savez(tmp_path / 'fmnist_stats.npz', mu=np.zeros(128), sigma=np.eye(128))
  with pytest.raises(fid.InputError, match='128-d statistics'):
    fid.evaluate(npz, str(tmp_path / 'fmnist_stats.npz'), inception_weights=weights)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'ddpm_jax.fid', *args], cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                        timeout=600, stdin=subprocess.DEVNULL)


def test_command_line(tmp_path):
  npz = image_files.save_npz(str(tmp_path / 's.npz'), _images(4, 20))
  ref = _folder(tmp_path / 'ref', _images(5, 20))
  out = _cli(npz, ref, '--features=fmnist', f'--save_stats={tmp_path / "st.npz"}')
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert lines[0].startswith('FD-FMNIST ') and lines[1].startswith('protocol: ')
  assert os.path.exists(tmp_path / 'st.npz')
  out = _cli(npz, ref)  # FID without the Inception weights.
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      'error: FID needs the FID Inception-v3 weights (none given)')
  out = _cli(str(tmp_path / 'missing.npz'), ref, '--features=fmnist')
  assert out.returncode == 1 and 'is neither an .npz file, a folder of images nor a dataset' in out.stderr
