"""Schedules against their closed forms (float64 references)."""

import math

import jax
import numpy as np
import pytest

from ddpm_jax import schedules


def _ref_linear(T=1000, b0=1e-4, b1=0.02):
  return np.linspace(b0, b1, T, dtype=np.float64)


def test_linear_betas_are_the_papers():
  s = schedules.make_schedule('linear', 1000)
  assert s.num_timesteps == 1000
  assert s.betas.dtype == np.float32
  np.testing.assert_allclose(s.betas[0], 1e-4, rtol=1e-6)
  np.testing.assert_allclose(s.betas[-1], 0.02, rtol=1e-6)
  np.testing.assert_allclose(np.diff(np.asarray(s.betas, np.float64)), (0.02 - 1e-4) / 999,
                             rtol=1e-4)


def test_alphas_cumprod_is_the_cumulative_product():
  s = schedules.make_schedule('linear', 1000)
  ref = np.cumprod(1.0 - _ref_linear())
  np.testing.assert_allclose(s.alphas_cumprod, ref, rtol=1e-6)
  # A pinned value: alphabar_T of the paper's schedule (signal left at t = T).
  assert math.isclose(float(s.alphas_cumprod[-1]), 4.0358e-5, rel_tol=1e-3)
  np.testing.assert_allclose(s.alphas_cumprod_prev[0], 1.0)
  np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1], rtol=1e-6)
  np.testing.assert_allclose(s.sqrt_alphas_cumprod ** 2, s.alphas_cumprod, rtol=1e-5)
  np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod ** 2, 1 - ref, rtol=1e-5)
  np.testing.assert_allclose(s.sqrt_recip_alphas_cumprod, 1 / np.sqrt(ref), rtol=1e-5)
  np.testing.assert_allclose(s.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / ref - 1), rtol=1e-5)


def test_posterior_variance_and_mean_coefficients_eq7():
  s = schedules.make_schedule('linear', 1000)
  betas = _ref_linear()
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  var = betas * (1 - abar_prev) / (1 - abar)
  np.testing.assert_allclose(s.posterior_variance, var, rtol=1e-5, atol=1e-12)
  assert float(s.posterior_variance[0]) == 0.0  # betatilde_1 = 0: x_0 is known given x_1.
  np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(var[1]), rtol=1e-6)
  np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(var[1:]), rtol=1e-5)
  np.testing.assert_allclose(s.posterior_mean_coef1, np.sqrt(abar_prev) * betas / (1 - abar),
                             rtol=1e-5)
  np.testing.assert_allclose(s.posterior_mean_coef2,
                             np.sqrt(1 - betas) * (1 - abar_prev) / (1 - abar), rtol=1e-5)
  # The posterior variance never exceeds beta_t, the two bounds of Sec. 3.2.
  assert np.all(np.asarray(s.posterior_variance) <= np.asarray(s.betas) + 1e-9)


def test_quadratic_cosine_const():
  q = schedules.make_schedule('quadratic', 100, beta_start=1e-4, beta_end=0.02)
  np.testing.assert_allclose(np.diff(np.sqrt(np.asarray(q.betas, np.float64))),
                             (np.sqrt(0.02) - np.sqrt(1e-4)) / 99, rtol=1e-4)
  c = schedules.make_schedule('cosine', 1000)
  f = lambda u: np.cos((u / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.arange(1, 1001)
  ref = f(t) / f(0)
  unclipped = np.asarray(c.betas) < 0.999
  np.testing.assert_allclose(np.asarray(c.alphas_cumprod)[:900], ref[:900], rtol=1e-4)
  assert float(np.max(c.betas)) == pytest.approx(0.999)
  assert unclipped[:-1].all() and not unclipped[-1]
  k = schedules.make_schedule('const', 10, beta_end=0.05)
  np.testing.assert_allclose(k.betas, 0.05)
  np.testing.assert_allclose(k.alphas_cumprod, 0.95 ** np.arange(1, 11), rtol=1e-6)


def test_unknown_schedule_lists_valid_names():
  with pytest.raises(ValueError, match='linear, quadratic, cosine, const'):
    schedules.make_schedule('sigmoid', 10)
  with pytest.raises(ValueError, match='outside'):
    schedules.make_schedule('linear', 10, beta_start=0.5, beta_end=1.5)


def test_schedule_is_a_frozen_pytree():
  s = schedules.make_schedule('linear', 10)
  with pytest.raises(Exception):
    s.betas = None
  leaves = jax.tree.leaves(s)
  assert len(leaves) == 12 and all(l.shape == (10,) for l in leaves)
  doubled = jax.jit(lambda s: jax.tree.map(lambda a: 2 * a, s))(s)
  np.testing.assert_allclose(doubled.betas, 2 * np.asarray(s.betas))
