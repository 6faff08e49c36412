"""The forward process, the posterior and the parameterisations against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, objectives, schedules

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
  with pytest.raises(ValueError, match='needs the variance output'):
    diffusion.model_variance(S, t, 1, 'learned')
  with pytest.raises(ValueError, match='fixedlarge, fixedsmall, learned, learned_range'):
    diffusion.model_variance(S, t, 1, 'large')


def test_clipping_and_x0_mean_type():
  xt = jnp.full((2, 2, 2, 1), 3.0)
  out = diffusion.p_mean_variance(S, jnp.full_like(xt, 5.0), xt, jnp.array([0, 10]),
                                  mean_type='x0', clip=True)
  np.testing.assert_allclose(out.pred_x0, 1.0)
  # At t = 1 (index 0) the mean is exactly the (clipped) x_0 prediction.
  np.testing.assert_allclose(out.mean[0], 1.0, rtol=1e-6)


def x0_to_model_output(schedule, x0, xt, t, mean_type: str):
  """The output of parameterisation `mean_type` that stands for x_0 given x_t (the inverse of
  `diffusion.model_output_to_x0`)."""
  if mean_type == 'x0':
    return x0
  if mean_type == 'mu':
    return diffusion.q_posterior_mean_variance(schedule, x0, xt, t)[0]
  eps = diffusion.predict_eps_from_x0(schedule, xt, t, x0)
  return eps if mean_type == 'eps' else diffusion.v_from_x0_eps(schedule, x0, eps, t)


def convert_model_output(schedule, mean_out, xt, t, from_type: str, to_type: str):
  """A mean output of parameterisation `from_type` re-expressed as `to_type` (x0/eps/v/mu)."""
  if from_type == to_type:
    return mean_out
  x0 = diffusion.model_output_to_x0(schedule, mean_out, xt, t, from_type)
  return x0_to_model_output(schedule, x0, xt, t, to_type)


# ---------------------------------------------------------------------------------------------
# Parameterisations: eps, x0, v and mu determine each other given x_t.


def _example(n=6, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x0 = jax.random.uniform(k1, (n, 4, 4, 2), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  t = jnp.array([0, 1, 10, 250, 600, 999][:n], jnp.int32)
  return x0, eps, t, diffusion.q_sample(S, x0, t, eps)


def test_mean_types_convert_to_each_other_exactly():
  x0, eps, t, xt = _example()
  targets = {m: objectives.mean_target(S, x0, xt, t, eps, m) for m in diffusion.MEAN_TYPES}
  abar = np.asarray(S.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None, None]
  np.testing.assert_allclose(targets['v'], np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0,
                             atol=1e-6)
  for src, out in targets.items():
    # x0 is recovered to float32 rounding amplified by 1/coef1_t (mu at t = 1000: ~8e3).
    np.testing.assert_allclose(diffusion.model_output_to_x0(S, out, xt, t, src), x0,
                               atol=2e-3 if src == 'mu' else 2e-4, err_msg=src)
    for dst, expected in targets.items():
      got = convert_model_output(S, out, xt, t, src, dst)
      # eps from x0 divides by sqrt(1/alphabar - 1) = 0.01 at t = 1; mu -> others as above.
      atol = 5e-3 if 'mu' in (src, dst) or dst == 'eps' else 2e-4
      np.testing.assert_allclose(got, expected, atol=atol, err_msg=f'{src} -> {dst}')
  # Round trips through x0 in float64 NumPy: the formulas themselves are exact inverses.
  coef1 = np.asarray(S.posterior_mean_coef1, np.float64)[np.asarray(t)][:, None, None, None]
  coef2 = np.asarray(S.posterior_mean_coef2, np.float64)[np.asarray(t)][:, None, None, None]
  x0n, epsn = np.asarray(x0, np.float64), np.asarray(eps, np.float64)
  xtn = np.sqrt(abar) * x0n + np.sqrt(1 - abar) * epsn
  mu = coef1 * x0n + coef2 * xtn
  np.testing.assert_allclose((mu - coef2 * xtn) / coef1, x0n, atol=1e-9)
  v = np.sqrt(abar) * epsn - np.sqrt(1 - abar) * x0n
  np.testing.assert_allclose(np.sqrt(abar) * xtn - np.sqrt(1 - abar) * v, x0n, atol=1e-12)


@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_p_mean_of_the_true_target_is_the_posterior_mean(mean_type):
  x0, eps, t, xt = _example()
  out = objectives.mean_target(S, x0, xt, t, eps, mean_type)
  p = diffusion.p_mean_variance(S, out, xt, t, var_type='fixedsmall', clip=False,
                                mean_type=mean_type)
  q_mean, q_var, _ = diffusion.q_posterior_mean_variance(S, x0, xt, t)
  np.testing.assert_allclose(p.mean, q_mean, atol=2e-4)
  np.testing.assert_allclose(p.variance, np.broadcast_to(q_var, p.variance.shape), rtol=1e-6)


def test_learned_variances():
  t = jnp.array([0, 5, 500, 999], jnp.int32)
  ones = jnp.ones((4, 2, 2, 1))
  var, logvar = diffusion.model_variance(S, t, 4, 'learned', -3.0 * ones)
  np.testing.assert_allclose(logvar, -3.0)
  np.testing.assert_allclose(var, np.exp(-3.0), rtol=1e-6)
  idx = np.asarray(t)
  lo = np.asarray(S.posterior_log_variance_clipped)[idx][:, None, None, None]
  hi = np.log(np.asarray(S.betas))[idx][:, None, None, None]
  for v, expected in [(-1.0, lo), (1.0, hi), (0.0, (lo + hi) / 2)]:
    _, logvar = diffusion.model_variance(S, t, 4, 'learned_range', v * ones)
    np.testing.assert_allclose(logvar, np.broadcast_to(expected, logvar.shape), rtol=1e-6)
  # The variance channels are the last C of a 2C output.
  out = jnp.concatenate([jnp.zeros((4, 2, 2, 1)), -ones], axis=-1)
  p = diffusion.p_mean_variance(S, out, ones, t, var_type='learned_range', clip=False)
  assert p.mean.shape == (4, 2, 2, 1)
  np.testing.assert_allclose(p.log_variance, np.broadcast_to(lo, p.log_variance.shape),
                             rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The variational bound.


def _norm_cdf(x):
  return 0.5 * (1 + np.vectorize(math.erf)(np.asarray(x, np.float64) / math.sqrt(2)))


def test_normal_kl_against_numpy():
  rng = np.random.default_rng(0)
  m1, m2, lv1, lv2 = (rng.normal(size=50) for _ in range(4))
  expected = (np.log(np.exp(lv2 / 2) / np.exp(lv1 / 2)) +
              (np.exp(lv1) + (m1 - m2) ** 2) / (2 * np.exp(lv2)) - 0.5)
  np.testing.assert_allclose(diffusion.normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(diffusion.normal_kl(m1, lv1, m1, lv1), 0.0, atol=1e-6)


def test_approx_cdf_is_close_to_the_normal_cdf():
  x = np.linspace(-6, 6, 1001)
  np.testing.assert_allclose(diffusion.approx_standard_normal_cdf(x), _norm_cdf(x), atol=2e-4)


@pytest.mark.parametrize('mean,log_scale', [(0.0, np.log(0.01)), (0.3, np.log(0.2)),
                                            (-0.99, np.log(0.003)), (1.5, 0.0)])
def test_discretized_decoder_probabilities_sum_to_one(mean, log_scale):
  levels = np.arange(256) / 127.5 - 1.0  # uint8 0..255 -> [-1, 1].
  logp = diffusion.discretized_gaussian_log_likelihood(
      jnp.asarray(levels, jnp.float32), jnp.full((256,), mean, jnp.float32),
      jnp.full((256,), log_scale, jnp.float32))
  assert float(jnp.sum(jnp.exp(logp))) == pytest.approx(1.0, abs=1e-4)
  assert np.all(np.asarray(logp) <= 1e-6)


def test_vlb_terms_equal_the_per_term_formulas():
  x0, _, _, _ = _example()
  x0 = jnp.round((x0 + 1) * 127.5) / 127.5 - 1  # Data on the 256 levels.
  t = jnp.array([0, 0, 3, 100, 500, 999], jnp.int32)
  xt = diffusion.q_sample(S, x0, t, jax.random.normal(jax.random.PRNGKey(7), x0.shape))
  out = 0.5 * jax.random.normal(jax.random.PRNGKey(8), x0.shape[:-1] + (4,))
  terms = diffusion.vlb_terms(S, out, x0, xt, t, mean_type='eps', var_type='learned_range')
  # Direct NumPy computation of both branches.
  idx = np.asarray(t)
  ex = lambda a: np.asarray(a, np.float64)[idx][:, None, None, None]
  x0n, xtn, outn = (np.asarray(a, np.float64) for a in (x0, xt, out))
  eps, v = outn[..., :2], outn[..., 2:]
  abar = ex(S.alphas_cumprod)
  pred_x0 = (xtn - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
  p_mean = ex(S.posterior_mean_coef1) * pred_x0 + ex(S.posterior_mean_coef2) * xtn
  frac = (v + 1) / 2
  p_logvar = frac * np.log(ex(S.betas)) + (1 - frac) * ex(S.posterior_log_variance_clipped)
  q_mean = ex(S.posterior_mean_coef1) * x0n + ex(S.posterior_mean_coef2) * xtn
  q_logvar = ex(S.posterior_log_variance_clipped)
  kl = 0.5 * (-1 + p_logvar - q_logvar + np.exp(q_logvar - p_logvar) +
              (q_mean - p_mean) ** 2 * np.exp(-p_logvar))
  kl_bpd = kl.mean(axis=(1, 2, 3)) / np.log(2)
  np.testing.assert_allclose(terms.kl, kl_bpd, rtol=2e-3, atol=1e-5)
  sd = np.exp(0.5 * p_logvar)
  hi = np.where(x0n > 0.999, 1.0, _norm_cdf((x0n + 1 / 255 - p_mean) / sd))
  lo = np.where(x0n < -0.999, 0.0, _norm_cdf((x0n - 1 / 255 - p_mean) / sd))
  nll_bpd = -np.log(np.maximum(hi - lo, 1e-12)).mean(axis=(1, 2, 3)) / np.log(2)
  np.testing.assert_allclose(terms.decoder_nll[:2], nll_bpd[:2], rtol=2e-3)
  expected = np.where(idx == 0, nll_bpd, kl_bpd)
  np.testing.assert_allclose(terms.vlb, expected, rtol=2e-3, atol=1e-5)
  # And the `kl` training loss is that per-example term.
  losses = objectives.training_losses(S, out, x0, xt, t, None, mean_type='eps',
                                      var_type='learned_range', loss_type='kl')
  np.testing.assert_array_equal(losses['loss'], terms.vlb)


def test_vlb_with_the_true_posterior_is_zero_and_prior_is_tiny():
  x0, eps, t, xt = _example()
  t = t.at[0].set(1)  # Only KL terms (t > 1 in the paper's numbering).
  xt = diffusion.q_sample(S, x0, t, eps)
  terms = diffusion.vlb_terms(S, x0, x0, xt, t, mean_type='x0', var_type='fixedsmall')
  np.testing.assert_allclose(terms.vlb, 0.0, atol=1e-5)
  x = jax.random.uniform(jax.random.PRNGKey(3), (64, 8, 8, 3), minval=-1, maxval=1)
  prior = np.asarray(diffusion.prior_bpd(S, x))
  abar_T = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[-1])
  # KL(N(sqrt(a) x, 1 - a) || N(0, 1)) = (-log(1 - a) - a + a x^2) / 2 ~ a x^2 / 2 nats.
  expected = ((-np.log1p(-abar_T) - abar_T + abar_T * np.asarray(x, np.float64) ** 2) / 2
              ).mean(axis=(1, 2, 3)) / np.log(2)
  np.testing.assert_allclose(prior, expected, rtol=0.02)
  assert 5e-6 < prior.mean() < 2e-5  # ~1e-5 bits/dim, as the paper reports.
