"""Bits/dim of the full variational bound (eq. 5) against closed forms and a host-loop reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, schedules
from ddpm_jax.metrics import bpd


def _point_mass_eps(schedule, c):
  """The ideal eps-predictor when the data is the single point c."""
  def denoise(xt, t):
    abar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (xt.ndim - 1))
    return (xt - jnp.sqrt(abar) * c) / jnp.sqrt(1 - abar)
  return denoise


def test_point_mass_model_has_zero_kl_terms_and_closed_form_decoder():
  s = schedules.make_schedule('linear', 1000)
  c = 2 * 100 / 255 - 1  # A pixel level.
  x0 = jnp.full((2, 4, 4, 1), c)
  out = jax.jit(lambda k: bpd.bpd_terms(s, _point_mass_eps(s, c), x0, k,
                                        var_type='fixedsmall'))(jax.random.PRNGKey(0))
  terms = np.asarray(out['terms'])
  assert terms.shape == (2, 1000)
  # The model's mean is the true posterior mean and its variance the posterior variance.
  np.testing.assert_allclose(terms[:, 1:], 0.0, atol=2e-4)
  sigma = math.exp(0.5 * float(s.posterior_log_variance_clipped[0]))
  cdf = lambda x: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
  decoder = -math.log2(cdf(1 / 255 / sigma) - cdf(-1 / 255 / sigma))
  np.testing.assert_allclose(terms[:, 0], decoder, rtol=1e-3)
  np.testing.assert_allclose(out['total'], terms.sum(1) + np.asarray(out['prior']), rtol=1e-6)


def test_prior_term_is_tiny_for_the_papers_schedule():
  s = schedules.make_schedule('linear', 1000)
  x0 = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)) / 127.5 - 1,
                   jnp.float32)
  prior = np.asarray(diffusion.prior_bpd(s, x0))
  assert np.all(prior > 0) and np.all(prior < 5e-5)  # The paper reports about 1e-5.


def test_scan_equals_a_host_loop_and_bpd_is_positive():
  s = schedules.make_schedule('linear', 20, beta_end=0.3)
  w = jax.random.normal(jax.random.PRNGKey(3), (1, 1, 1, 3)) * 0.3
  denoise = lambda xt, t: jnp.tanh(xt * w + 0.01 * t[:, None, None, None])  # A poor model.
  x0 = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3)) / 127.5 - 1,
                   jnp.float32)
  key = jax.random.PRNGKey(7)
  out = bpd.bpd_terms(s, denoise, x0, key, var_type='fixedlarge')
  for t in range(20):
    tt = jnp.full((3,), t, jnp.int32)
    xt = diffusion.q_sample(s, x0, tt, jax.random.normal(jax.random.fold_in(key, t), x0.shape))
    ref = diffusion.vlb_terms(s, denoise(xt, tt), x0, xt, tt, var_type='fixedlarge', clip=True)
    np.testing.assert_allclose(out['terms'][:, t], ref.vlb, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(out['terms']) >= 0) and np.all(np.asarray(out['total']) > 0)
  summary = bpd.summarize(out)
  assert summary['bpd'] == pytest.approx(
      summary['prior_bpd'] + summary['decoder_bpd'] + summary['kl_terms_bpd'], rel=1e-6)
  assert summary['terms'].shape == (20,)
