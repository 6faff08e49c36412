"""The forward process, the posterior and the parameterisations against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, schedules

S = schedules.make_schedule('linear', 1000)


def _full(t, n):
  return jnp.full((n,), t, jnp.int32)


@pytest.mark.parametrize('t', [0, 10, 500, 999])
def test_q_sample_moments_eq4(t):
  n = 200_000
  x0 = jnp.full((n, 1, 1, 1), 0.7)
  noise = jax.random.normal(jax.random.PRNGKey(t), x0.shape)
  xt = np.asarray(diffusion.q_sample(S, x0, _full(t, n), noise), np.float64)
  abar = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t])
  se = np.sqrt((1 - abar) / n)
  assert abs(xt.mean() - np.sqrt(abar) * 0.7) < 5 * se
  assert xt.var() == pytest.approx(1 - abar, rel=0.02)
  mean, var, logvar = diffusion.q_mean_variance(S, x0[:1], _full(t, 1))
  np.testing.assert_allclose(mean, np.sqrt(abar) * 0.7, rtol=1e-5)
  np.testing.assert_allclose(var, 1 - abar, rtol=1e-5)
  np.testing.assert_allclose(logvar, np.log(1 - abar), rtol=1e-5)


@pytest.mark.parametrize('t', [1, 50, 700])
def test_posterior_mean_variance_match_x_tminus1_statistics(t):
  # Draw x_{t-1} ~ q(x_{t-1} | x_0), then x_t ~ q(x_t | x_{t-1}). Given (x_t, x_0), the
  # residual x_{t-1} - mutilde(x_t, x_0) must have mean 0, variance betatilde_t and no
  # correlation with x_t (eqs. 6-7).
  n = 200_000
  k1, k2 = jax.random.split(jax.random.PRNGKey(t))
  x0 = jnp.full((n, 1, 1, 1), -0.3)
  x_prev = diffusion.q_sample(S, x0, _full(t - 1, n), jax.random.normal(k1, x0.shape))
  beta = S.betas[t]
  xt = jnp.sqrt(1 - beta) * x_prev + jnp.sqrt(beta) * jax.random.normal(k2, x0.shape)
  mean, var, logvar = diffusion.q_posterior_mean_variance(S, x0, xt, _full(t, n))
  r = np.asarray(x_prev - mean, np.float64).ravel()
  assert abs(r.mean()) < 5 * np.sqrt(float(var[0, 0, 0, 0]) / n)
  assert r.var() == pytest.approx(float(var[0, 0, 0, 0]), rel=0.02)
  assert abs(np.corrcoef(r, np.asarray(xt).ravel())[0, 1]) < 0.01
  np.testing.assert_allclose(logvar, np.log(var), rtol=1e-4)


def test_x0_reconstruction_from_true_eps_is_exact():
  key = jax.random.PRNGKey(0)
  x0 = jax.random.uniform(key, (16, 8, 8, 3), minval=-1, maxval=1)
  eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  for t, tol in [(0, 1e-6), (100, 1e-5), (999, 5e-4)]:
    xt = diffusion.q_sample(S, x0, _full(t, 16), eps)
    np.testing.assert_allclose(diffusion.predict_x0_from_eps(S, xt, _full(t, 16), eps), x0,
                               atol=tol)
    np.testing.assert_allclose(diffusion.predict_eps_from_x0(S, xt, _full(t, 16), x0), eps,
                               atol=max(tol, 1e-4) if t else 5e-3)


def test_p_mean_eps_equals_eq11_without_clipping():
  key = jax.random.PRNGKey(3)
  xt = jax.random.normal(key, (8, 4, 4, 3))
  eps = jax.random.normal(jax.random.PRNGKey(4), xt.shape)
  t = jnp.array([1, 5, 20, 100, 300, 600, 900, 999], jnp.int32)
  out = diffusion.p_mean_variance(S, eps, xt, t, var_type='fixedsmall', clip=False)
  b = np.asarray(S.betas)[np.asarray(t)][:, None, None, None]
  abar = np.asarray(S.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None, None]
  eq11 = (np.asarray(xt) - b / np.sqrt(1 - abar) * np.asarray(eps)) / np.sqrt(1 - b)
  np.testing.assert_allclose(out.mean, eq11, rtol=1e-4, atol=1e-4)


def test_model_variances_fixedsmall_fixedlarge():
  t = jnp.arange(1000, dtype=jnp.int32)
  var, logvar = diffusion.model_variance(S, t, 1, 'fixedlarge')
  np.testing.assert_allclose(var[1:], S.betas[1:])
  np.testing.assert_allclose(var[0], S.posterior_variance[1])
  np.testing.assert_allclose(logvar, np.log(np.asarray(var)), rtol=1e-6)
  var, logvar = diffusion.model_variance(S, t, 1, 'fixedsmall')
  np.testing.assert_allclose(var, S.posterior_variance)
  np.testing.assert_allclose(logvar, S.posterior_log_variance_clipped)
  with pytest.raises(ValueError, match='fixedlarge, fixedsmall'):
    diffusion.model_variance(S, t, 1, 'learned')


def test_clipping_and_x0_mean_type():
  xt = jnp.full((2, 2, 2, 1), 3.0)
  out = diffusion.p_mean_variance(S, jnp.full_like(xt, 5.0), xt, jnp.array([0, 10]),
                                  mean_type='x0', clip=True)
  np.testing.assert_allclose(out.pred_x0, 1.0)
  # At t = 1 (index 0) the mean is exactly the (clipped) x_0 prediction.
  np.testing.assert_allclose(out.mean[0], 1.0, rtol=1e-6)


def test_simple_loss_eq14():
  noise = jnp.ones((3, 2, 2, 1))
  x0 = jnp.zeros_like(noise)
  np.testing.assert_allclose(diffusion.simple_loss(noise, x0, noise), 0.0)
  out = noise.at[1].set(3.0)
  np.testing.assert_allclose(diffusion.simple_loss(out, x0, noise), [0.0, 4.0, 0.0])
  np.testing.assert_allclose(diffusion.simple_loss(out, x0, noise, mean_type='x0'), [1, 9, 1])
