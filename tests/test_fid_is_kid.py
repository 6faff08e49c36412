"""Tests for the FID / IS / KID maths and batched feature extraction (`ddpm_jax.metrics`)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ddpm_jax.metrics.fid_is_kid import (extract_features, feature_statistics, frechet_distance,
                                            inception_score, kernel_inception_distance,
                                            mmd2_unbiased, polynomial_kernel, sample_quality)


def random_spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------
# Fréchet distance.


def test_frechet_distance_matches_eigenvalue_formula():
  # tr((S1 S2)^(1/2)) = sum of the square roots of the (real, positive) eigenvalues of S1 S2.
  rng = np.random.default_rng(0)
  d = 64
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = random_spd(rng, d), random_spd(rng, d)
  eig = np.linalg.eigvals(s1 @ s2)
  assert np.all(np.abs(eig.imag) < 1e-9) and np.all(eig.real > 0)
  direct = np.sum((mu1 - mu2)**2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(eig.real))
  assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9)
  assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(direct, rel=1e-9)


def test_frechet_distance_diagonal_closed_form():
  # Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
  mu1, mu2 = np.array([0., 1., 2.]), np.array([1., 1., 0.])
  a, b = np.array([1., 4., 9.]), np.array([4., 4., 1.])
  expected = 5.0 + (1 - 2)**2 + 0 + (3 - 1)**2  # = 10
  assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-12)


def test_frechet_distance_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(1)
  mu, sigma = feature_statistics(rng.normal(size=(500, 32)))
  assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_distance_rank_deficient_covariances():
  # 20 samples in 64 dimensions: rank-19 covariances. sqrtm still finds the root of S S = S^2.
  rng = np.random.default_rng(2)
  mu, sigma = feature_statistics(rng.normal(size=(20, 64)))
  fd = frechet_distance(mu, sigma, mu, sigma)
  assert np.isfinite(fd) and abs(fd) < 1e-4


def test_frechet_distance_singular_product_uses_eps_offset():
  # S1 S2 = 0: sqrtm flags it singular, so the root is taken of (S1 + eps I)(S2 + eps I) =
  # diag(eps (1 + eps), eps (1 + eps)), whose trace is 2 sqrt(eps (1 + eps)).
  s1, s2, mu = np.diag([1.0, 0.0]), np.diag([0.0, 1.0]), np.zeros(2)
  eps = 1e-6
  expected = 2.0 - 2 * 2 * math.sqrt(eps * (1 + eps))
  assert frechet_distance(mu, s1, mu, s2, eps=eps) == pytest.approx(expected, rel=1e-9)


def test_feature_statistics():
  f = np.array([[1., 2.], [3., 6.], [5., 10.]])
  mu, sigma = feature_statistics(f)
  np.testing.assert_allclose(mu, [3., 6.])
  np.testing.assert_allclose(sigma, [[4., 8.], [8., 16.]])  # unbiased (N - 1)
  with pytest.raises(ValueError):
    feature_statistics(np.ones((1, 3)))


# ---------------------------------------------------------------------------------------------
# Inception Score.


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = inception_score(np.zeros((100, 1008)), splits=10)
  assert mean == 1.0 and std == 0.0


def test_inception_score_of_confident_diverse_predictions_is_num_classes():
  k, per_class = 10, 20
  labels = np.tile(np.arange(k), per_class)  # every split of 20 holds two of each class
  probs = np.eye(k)[labels]
  assert inception_score(probs, splits=10, from_logits=False) == (pytest.approx(k, abs=1e-12),
                                                                   pytest.approx(0.0, abs=1e-12))
  mean, std = inception_score(50.0 * np.eye(k)[labels], splits=10)  # from logits
  assert mean == pytest.approx(k, rel=1e-12) and std < 1e-12
  # One class per split: each split's marginal is that class, so every score is 1.
  mean, _ = inception_score(np.eye(k)[np.repeat(np.arange(k), per_class)], splits=10,
                            from_logits=False)
  assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_scipy_entropy():
  rng = np.random.default_rng(3)
  logits = 3.0 * rng.normal(size=(300, 20))
  p = scipy.special.softmax(logits, axis=1)
  scores = []
  for part in np.split(p, 3):
    q = part.mean(axis=0)
    scores.append(math.exp(np.mean([scipy.stats.entropy(row, q) for row in part])))
  mean, std = inception_score(logits, splits=3)
  assert mean == pytest.approx(np.mean(scores), rel=1e-10)
  assert std == pytest.approx(np.std(scores), rel=1e-8)
  assert inception_score(p, splits=3, from_logits=False)[0] == pytest.approx(mean, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Kernel Inception Distance.


def test_mmd2_unbiased_matches_double_loop():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
  k = lambda a, b: (a @ b / 3 + 1)**3  # pylint: disable=unnecessary-lambda-assignment
  m = 6
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
  np.testing.assert_allclose(polynomial_kernel(x, y)[2, 4], k(x[2], y[4]), rtol=1e-14)


def test_kid_with_one_full_subset_is_the_plain_estimate():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
  mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=1000)
  assert mean == pytest.approx(mmd2_unbiased(x, y), rel=1e-10) and std == 0.0


def test_kid_is_unbiased_where_the_plain_v_statistic_is_not():
  # 400 independent pairs of samples of m = 20 from the same N(0, I_4): the unbiased estimates
  # average to 0 within 3 standard errors; the biased V-statistic (diagonal kept) sits far above.
  rng = np.random.default_rng(6)
  m, d, reps = 20, 4, 400
  unbiased, biased = [], []
  for _ in range(reps):
    x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
    unbiased.append(kernel_inception_distance(x, y, num_subsets=1, subset_size=m)[0])
    biased.append(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean() -
                  2 * polynomial_kernel(x, y).mean())
  se = np.std(unbiased) / np.sqrt(reps)
  assert abs(np.mean(unbiased)) < 3 * se
  assert np.mean(biased) > 20 * se


def test_kid_same_distribution_near_zero_and_shifted_distribution_positive():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
  same, same_std = kernel_inception_distance(x, y, num_subsets=30, subset_size=100)
  shifted, _ = kernel_inception_distance(x, y + 0.5, num_subsets=30, subset_size=100)
  assert abs(same) < 2 * same_std  # |mean| well inside one subset's spread
  assert shifted > 0.1 and shifted > 20 * same_std


def test_sample_quality_combines_the_metrics_it_can_define():
  rng = np.random.default_rng(9)
  x, y, logits = rng.normal(size=(50, 6)), rng.normal(1.0, 2.0, size=(40, 6)), rng.normal(
      size=(50, 5))
  q = sample_quality(x, y, logits, is_splits=5, kid_subset_size=30)
  # Two Gaussians: FD -> ||1||^2 * 6 + tr(I + 4I - 2 * 2I) = 6 + 6 = 12 (estimated from 50/40).
  assert q['fd'] == frechet_distance(*feature_statistics(x), *feature_statistics(y))
  assert 8 < q['fd'] < 16
  assert (q['is'], q['is_std']) == inception_score(logits, splits=5)
  assert (q['kid'], q['kid_std']) == kernel_inception_distance(x, y, subset_size=30)
  q = sample_quality(x, feature_statistics(y), is_splits=100)  # Statistics only: no KID.
  assert set(q) == {'fd'}


# ---------------------------------------------------------------------------------------------
# Feature extraction.


def channel_sums(params, x):
  return {'sum': x.astype(jnp.float32).sum(axis=(1, 2)) * params['w'], 'first': x[:, 0, 0, 0]}


def test_extract_features_batches_pads_and_repeats_grey():
  rng = np.random.default_rng(8)
  images = rng.integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
  out = extract_features(channel_sums, {'w': jnp.float32(2.0)}, images, batch_size=3)
  np.testing.assert_allclose(out['sum'], 2.0 * images.astype(np.float64).sum(axis=(1, 2)))
  np.testing.assert_array_equal(out['first'], images[:, 0, 0, 0])
  grey = images[..., :1]
  out = extract_features(channel_sums, {'w': jnp.float32(1.0)}, grey, batch_size=4)
  assert out['sum'].shape == (7, 3)
  np.testing.assert_allclose(out['sum'], np.repeat(grey.sum(axis=(1, 2)), 3, axis=1))


def test_extract_features_rejects_float_images():
  with pytest.raises(TypeError, match='uint8'):
    extract_features(channel_sums, {'w': 1.0}, np.zeros((2, 4, 4, 3), np.float32), 2)
