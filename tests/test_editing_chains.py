"""Inpainting, colorization and SDEdit with denoisers whose optimum is known in closed form.

Data x_0 ~ N(mu, Sigma) over the pixels; the ideal eps-predictor is
E[eps | x_t] = sqrt(1 - abar) (abar Sigma + (1 - abar) I)^-1 (x_t - sqrt(abar) mu), so every
chain is affine in its state plus Gaussian noise and its output law is computed exactly in
NumPy (float64) below; the samplers' empirical moments must match it within sampling error.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, editing_chains, reverse_chains, schedules
from test_reverse_chains import (MU, SIGMA, _affine_coefficients, _exact_moments,
                                 gaussian_optimal_eps)

BETAS = schedules.make_betas('linear', 1000)
S = schedules.make_schedule('linear', 1000)


def _chain(steps):
  return reverse_chains.respace(BETAS, reverse_chains.space_timesteps(1000, steps))


def full_gaussian_eps(schedule, timesteps, mu, cov):
  """The ideal eps-predictor for x_0 ~ N(mu, cov) over the flattened image (mu: (D,), cov:
  (D, D)); `timesteps` maps the network's timestep to the base schedule's alphabar."""
  lam, vecs = np.linalg.eigh(np.asarray(cov, np.float64))
  mu, lam, vecs = (jnp.asarray(a, jnp.float32) for a in (mu, lam, vecs))
  abar_all = jnp.asarray(np.cumprod(1 - BETAS), jnp.float32)
  del schedule, timesteps

  def denoise(xt, t):
    a = abar_all[t][:, None]
    flat = xt.reshape(xt.shape[0], -1)
    z = (flat - jnp.sqrt(a) * mu) @ vecs
    eps = jnp.sqrt(1 - a) * (z / (a * lam + 1 - a)) @ vecs.T
    return eps.reshape(xt.shape)

  return denoise


def _law_of_replacement_chain(kept, path, mu, cov, known_idx, known_val, sampler='ancestral',
                              eta=0.0):
  """Mean and covariance (float64) of the output of `replacement_sample` with the ideal
  denoiser of N(mu, cov) and P = diag(known pixels), over the chain of `kept` timesteps, along
  `path` (ancestral with fixedsmall variance, or DDIM with `eta`), no clipping."""
  d = len(mu)
  abar_all = np.cumprod(1 - BETAS)
  ab = abar_all[np.asarray(kept)]
  abp = np.concatenate([[1.0], ab[:-1]])
  known = np.zeros(d, bool)
  known[known_idx] = True

  def replace(m, c, abar):
    m, c = m.copy(), c.copy()
    m[known] = np.sqrt(abar) * known_val
    c[known, :], c[:, known] = 0.0, 0.0
    c[np.ix_(known, known)] = (1 - abar) * np.eye(known.sum())
    return m, c

  m, c = replace(np.zeros(d), np.eye(d), ab[-1])
  for src, dst in zip(path[:-1], path[1:]):
    a = ab[src]
    if dst > src:  # Forward jump.
      r = ab[dst] / a
      m, c = np.sqrt(r) * m, r * c + (1 - r) * np.eye(d)
      continue
    ap = abp[src]
    p = np.linalg.inv(a * cov + (1 - a) * np.eye(d))
    e_lin, e_off = np.sqrt(1 - a) * p, -np.sqrt(1 - a) * np.sqrt(a) * p @ mu
    x0_lin = (np.eye(d) - np.sqrt(1 - a) * e_lin) / np.sqrt(a)
    x0_off = -np.sqrt(1 - a) * e_off / np.sqrt(a)
    post_var = (1 - a / ap) * (1 - ap) / (1 - a)
    if sampler == 'ancestral':
      k1, k2 = np.sqrt(ap) * (1 - a / ap) / (1 - a), np.sqrt(a / ap) * (1 - ap) / (1 - a)
      lin, off = k1 * x0_lin + k2 * np.eye(d), k1 * x0_off
      var = post_var if src > 0 else 0.0
    else:
      var = eta**2 * post_var
      k = np.sqrt(max(1 - ap - var, 0.0))
      lin, off = np.sqrt(ap) * x0_lin + k * e_lin, np.sqrt(ap) * x0_off + k * e_off
    m, c = lin @ m + off, lin @ c @ lin.T + var * np.eye(d)
    m, c = replace(m, c, abp[src] if dst >= 0 else 1.0)
  return m, c


# ---------------------------------------------------------------------------------------------
# The pieces.


def test_repaint_path():
  np.testing.assert_array_equal(editing_chains.repaint_path(5), [4, 3, 2, 1, 0, -1])
  np.testing.assert_array_equal(editing_chains.repaint_path(5, 3, 1), [4, 3, 2, 1, 0, -1])
  # n = 6, jumps of 2 at indices 0 and 2 (not 4: the top stretch), each done twice in all.
  np.testing.assert_array_equal(editing_chains.repaint_path(6, 2, 2),
                                [5, 4, 3, 2, 4, 3, 2, 1, 0, 2, 1, 0, -1])
  path = editing_chains.repaint_path(250, 10, 10)  # RePaint's setting.
  down = np.sum(np.diff(path) < 0)
  assert down == 250 + 9 * 10 * 24 and path[0] == 249 and path[-1] == -1
  assert set(np.diff(path)) == {-1, 10}
  with pytest.raises(ValueError, match='jump_length'):
    editing_chains.repaint_path(10, 0, 2)


def test_q_jump_is_q_sample_from_the_data_and_composes():
  chain = _chain(50)
  x, z = jnp.full((2, 3), 0.7), jnp.full((2, 3), 0.4)
  got = editing_chains.q_jump(chain.schedule, x, -1, 17, z)
  want = diffusion.q_sample(chain.schedule, x, jnp.array([17, 17]), z)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Two jumps 3 -> 10 -> 30 have the moments of one jump 3 -> 30 (scale and variance).
  abar = np.asarray(chain.schedule.alphas_cumprod, np.float64)
  scale = lambda s, d: float(editing_chains.q_jump(chain.schedule, jnp.ones(()), s, d, 0.0))
  var = lambda s, d: float(editing_chains.q_jump(chain.schedule, jnp.zeros(()), s, d, 1.0))**2
  assert scale(3, 10) * scale(10, 30) == pytest.approx(np.sqrt(abar[30] / abar[3]), rel=1e-5)
  assert scale(10, 30)**2 * var(3, 10) + var(10, 30) == pytest.approx(var(3, 30), rel=1e-5)
  np.testing.assert_array_equal(editing_chains.q_jump(chain.schedule, x, -1, jnp.int32(-1), z), x)


def test_grey_projector_is_score_sdes_decouple_replace_couple():
  # score_sde's orthogonal colour basis: (1,1,1)/sqrt3, (-2,1,1)/sqrt6, (0,1,-1)/sqrt2.
  m = np.stack([np.ones(3) / np.sqrt(3), np.array([-2, 1, 1]) / np.sqrt(6),
                np.array([0, 1, -1]) / np.sqrt(2)], axis=1)
  np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-12)
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  keep = np.array([1.0, 0.0, 0.0])
  want = (x @ m * (1 - keep) + y @ m * keep) @ m.T  # decouple, replace channel 0, couple.
  got = editing_chains.replace_known(editing_chains.grey_projector, jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(got, want, atol=1e-5)


def start_index(timesteps, t0):
  """The chain index SDEdit starts from for the paper's t0 (1-based, 0 = no noise)."""
  return reverse_chains.chain_index(timesteps, t0 - 1)


def test_start_index():
  full, short = np.arange(1000), reverse_chains.space_timesteps(1000, 10)  # [0, 111, .., 999].
  assert start_index(full, 0) == -1
  assert start_index(full, 1) == 0
  assert start_index(full, 1000) == 999
  assert start_index(short, 500) == 4  # Kept timestep 444 (0-based) <= 499.
  assert start_index(short, 1000) == 9


# ---------------------------------------------------------------------------------------------
# Inpainting.


def _bad_model(var_type):
  """An arbitrary network (sin of its input and timestep), with variance channels when the
  variance is learned."""
  def denoise(x, t):
    out = 3.0 * jnp.sin(x + 0.01 * t[:, None, None, None])
    return jnp.concatenate([out, jnp.cos(x)], -1) if var_type.startswith('learned') else out
  return denoise


@pytest.mark.parametrize('sampler,mean_type,var_type,steps,jump,resample', [
    ('ancestral', 'eps', 'fixedlarge', 0, 1, 1),
    ('ancestral', 'x0', 'fixedsmall', 7, 2, 3),
    ('ancestral', 'v', 'learned_range', 5, 1, 2),
    ('ancestral', 'mu', 'learned', 0, 3, 2),
    ('ddim', 'eps', 'learned_range', 6, 2, 2),
    ('ddim', 'v', 'fixedlarge', 0, 1, 1),
])
def test_inpainting_keeps_the_known_pixels_exactly(sampler, mean_type, var_type, steps, jump,
                                                   resample):
  base = schedules.make_schedule('linear', 40, beta_end=0.3)
  chain = (reverse_chains.Respaced(base, None) if not steps else
           reverse_chains.respace(schedules.make_betas('linear', 40, beta_end=0.3),
                                  reverse_chains.space_timesteps(40, steps)))
  rng = np.random.default_rng(1)
  image = jnp.asarray(rng.uniform(-1, 1, (3, 6, 6, 2)), jnp.float32)
  mask = jnp.asarray(rng.integers(0, 2, (3, 6, 6, 1)), jnp.float32)
  run = jax.jit(lambda k: editing_chains.inpaint(
      chain.schedule, _bad_model(var_type), image, mask, k, sampler=sampler, eta=0.5,
      jump_length=jump, resample=resample, mean_type=mean_type, var_type=var_type,
      timesteps=chain.timesteps))
  x = np.asarray(run(jax.random.PRNGKey(0)))
  m = np.broadcast_to(np.asarray(mask, bool), x.shape)
  np.testing.assert_array_equal(x[m], np.asarray(image)[m])
  assert np.all(np.isfinite(x)) and np.abs(x[~m] - np.asarray(image)[~m]).mean() > 0.1
  np.testing.assert_array_equal(x, run(jax.random.PRNGKey(0)))  # Pure in the key.
  assert not np.array_equal(x, run(jax.random.PRNGKey(1)))


def test_inpainting_samples_the_exact_conditional_of_independent_pixels():
  # x_0 ~ N(MU, SIGMA^2) i.i.d.: the unknown pixels' conditional law is N(MU, SIGMA^2), whatever
  # the known pixels are (here far out in the tails), with no correlation between them.
  n = 4000
  image = jnp.full((n, 4, 4, 1), 0.9).at[:, 1::2].set(-0.8)
  mask = jnp.ones((n, 4, 4, 1)).at[:, 1:3, 1:3].set(0.0)
  x = jax.jit(lambda k: editing_chains.inpaint(S, gaussian_optimal_eps(S, MU, SIGMA), image,
                                               mask, k, clip_denoised=False))(jax.random.PRNGKey(2))
  u = np.asarray(x)[:, 1:3, 1:3, 0].reshape(n, 4)
  assert u.mean() == pytest.approx(MU, abs=0.01)
  np.testing.assert_allclose(u.std(0), SIGMA, rtol=0.05)
  corr = np.corrcoef(u.T)[np.triu_indices(4, 1)]
  assert np.abs(corr).max() < 0.06  # 4 sigma of a zero correlation over 4000 samples.


MU2, COV2 = np.array([0.1, -0.2]), 0.25 * np.array([[1.0, 0.8], [0.8, 1.0]])
KNOWN = 0.5  # The known pixel's value; the unknown one's exact conditional law is:
COND_MEAN = MU2[1] + COV2[1, 0] / COV2[0, 0] * (KNOWN - MU2[0])  # 0.12
COND_VAR = COV2[1, 1] - COV2[1, 0]**2 / COV2[0, 0]  # 0.09


@functools.partial(jax.jit, static_argnames=('steps', 'sampler', 'jump', 'resample', 'n'))
def _inpaint_pair(key, steps, sampler, jump, resample, n=20000):
  chain = _chain(steps)
  image = jnp.full((n, 1, 2, 1), KNOWN)
  mask = jnp.asarray([1.0, 0.0]).reshape(1, 1, 2, 1)
  return editing_chains.inpaint(
      chain.schedule, full_gaussian_eps(None, None, MU2, COV2), image, mask, key,
      sampler=sampler, jump_length=jump, resample=resample, var_type='fixedsmall',
      clip_denoised=False, timesteps=chain.timesteps)[:, 0, 1, 0]


@pytest.mark.parametrize('steps,sampler,jump,resample', [
    (50, 'ancestral', 1, 1), (50, 'ancestral', 1, 5), (20, 'ancestral', 3, 4),
    (20, 'ddim', 2, 3)])
def test_inpainting_of_correlated_pixels_follows_its_closed_form_law(steps, sampler, jump,
                                                                     resample):
  # Two correlated pixels, the first known: the output law of the chain (replacement, with
  # RePaint resampling when resample > 1) computed exactly, against 20,000 samples.
  u = np.asarray(_inpaint_pair(jax.random.PRNGKey(3), steps, sampler, jump, resample))
  path = editing_chains.repaint_path(steps, jump, resample)
  m, c = _law_of_replacement_chain(reverse_chains.space_timesteps(1000, steps), path, MU2, COV2,
                                   [0], KNOWN, sampler)
  se = np.sqrt(c[1, 1] / len(u))
  assert u.mean() == pytest.approx(m[1], abs=5 * se)
  assert u.var() == pytest.approx(c[1, 1], rel=5 * np.sqrt(2 / len(u)))


def test_resampling_moves_inpainting_towards_the_exact_conditional():
  # Replacement alone is not the exact conditional when pixels are correlated (module
  # docstring): over 250 steps its mean is off by 0.12 and its variance 0.116 instead of 0.09.
  # RePaint's setting (jumps of 10, resample 10) closes most of both gaps; resampling every
  # step 20 times fixes the mean but overshoots the variance (closed-form laws).
  kept = reverse_chains.space_timesteps(1000, 250)
  law = lambda j, r: _law_of_replacement_chain(kept, editing_chains.repaint_path(250, j, r), MU2,
                                               COV2, [0], KNOWN)
  (m1, c1), (m10, c10), (m20, c20) = law(1, 1), law(10, 10), law(1, 20)
  assert abs(m1[1] - COND_MEAN) > 0.1 and c1[1, 1] - COND_VAR > 0.025
  assert abs(m10[1] - COND_MEAN) < 0.02 and abs(c10[1, 1] - COND_VAR) < 0.01
  assert abs(m20[1] - COND_MEAN) < 0.01 and COND_VAR - c20[1, 1] > 0.02
  assert COND_MEAN == pytest.approx(0.12) and COND_VAR == pytest.approx(0.09)


# ---------------------------------------------------------------------------------------------
# Colorization.


def test_colorization_keeps_the_grey_level_and_samples_the_exact_conditional():
  # Colour channels i.i.d. N(MU, SIGMA^2): the grey level (channel mean) and the deviations
  # from it are independent, so the deviations' conditional law is N(0, SIGMA^2 (I - 11^T/3)),
  # whatever the grey level: replacement is exact here, and the deviations follow the
  # unconditional chain's law (variance `_exact_moments`, SIGMA^2 up to discretisation).
  n = 3000
  grey = jnp.asarray(np.linspace(-0.9, 0.9, 8).reshape(1, 2, 4, 1) * np.ones((n, 1, 1, 1)),
                     jnp.float32)
  chain = _chain(100)
  for sampler in ('ancestral', 'ddim'):
    _, std = _exact_moments(chain.timesteps, sampler, 'fixedlarge', eta=1.0)
    x = jax.jit(lambda k, s=sampler: editing_chains.colorize(
        chain.schedule, gaussian_optimal_eps(S, MU, SIGMA), grey, k, sampler=s, eta=1.0,
        clip_denoised=False, fit_range=False, timesteps=chain.timesteps))(jax.random.PRNGKey(4))
    x = np.asarray(x)
    assert x.shape == (n, 2, 4, 3)
    np.testing.assert_allclose(x.mean(-1, keepdims=True), grey, atol=2e-6)
    dev = (x - x.mean(-1, keepdims=True)).reshape(-1, 3)
    np.testing.assert_allclose(dev.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(np.cov(dev.T), std**2 * (np.eye(3) - 1 / 3), atol=0.006)


def test_colorization_of_an_rgb_input_keeps_its_channel_mean_within_range():
  rng = np.random.default_rng(5)
  rgb = jnp.asarray(rng.uniform(-1, 1, (2, 4, 4, 3)), jnp.float32).at[0, 0, 0].set(1.0)
  raw, fitted = (np.asarray(editing_chains.colorize(
      S, _bad_model('fixedlarge'), rgb, jax.random.PRNGKey(0), fit_range=f)) for f in (0, 1))
  for x in (raw, fitted):
    np.testing.assert_allclose(x.mean(-1), np.asarray(rgb).mean(-1), atol=3e-6)
  assert np.abs(raw).max() > 1.05 and np.abs(fitted).max() <= 1.0 + 1e-6
  np.testing.assert_allclose(fitted[0, 0, 0], 1.0, atol=1e-6)  # White can only be white.
  inside = np.all(np.abs(raw) <= 1.0, axis=-1)
  np.testing.assert_allclose(fitted[inside], raw[inside], atol=1e-6)  # Untouched in range.
  dev_raw, dev_fit = (x - x.mean(-1, keepdims=True) for x in (raw, fitted))
  cos = (dev_raw * dev_fit).sum(-1) / (np.linalg.norm(dev_raw, axis=-1) *
                                       np.linalg.norm(dev_fit, axis=-1) + 1e-12)
  assert np.all((cos > 1 - 1e-4) | (np.linalg.norm(dev_fit, axis=-1) < 1e-5))  # Same hue.


# ---------------------------------------------------------------------------------------------
# SDEdit.


def test_sdedit_at_t0_zero_returns_the_input():
  image = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (2, 4, 4, 3)), jnp.float32)
  start = start_index(np.arange(1000), 0)
  out = editing_chains.sdedit(S, _bad_model('fixedlarge'), image, start, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize('sampler,steps', [('ancestral', 0), ('ddim', 50)])
def test_sdedit_at_t0_T_is_unconditional_sampling(sampler, steps):
  # An input far from the data (+1 everywhere): at t0 = T only sqrt(alphabar_T) ~ 6e-3 of it
  # survives; the samples have the unconditional chain's law and are nearly its samples from
  # the same noise.
  chain = _chain(steps or 1000)
  n = 4000
  image = jnp.ones((n, 2, 2, 1))
  denoise = gaussian_optimal_eps(S, MU, SIGMA)
  start = start_index(chain.timesteps, 1000)
  kw = dict(sampler=sampler, clip_denoised=False, timesteps=chain.timesteps if steps else None)
  key = jax.random.PRNGKey(7)
  x = np.asarray(jax.jit(lambda k: editing_chains.sdedit(chain.schedule, denoise, image, start,
                                                         k, **kw))(key))
  m, std = _exact_moments(chain.timesteps, sampler)  # The unconditional chain's law.
  assert x.mean() == pytest.approx(m, abs=0.01) and m == pytest.approx(MU, abs=0.01)
  assert x.std() == pytest.approx(std, rel=0.05)
  # The same chain from pure noise (the q_sample noise of `sdedit`'s key).
  key_noise, key_chain = jax.random.split(key)
  x_T = jax.random.normal(key_noise, image.shape)
  uncond = np.asarray(jax.jit(lambda: reverse_chains.sample(
      sampler, chain.schedule, denoise, image.shape, key_chain, x_T=x_T, **{
          k: v for k, v in kw.items() if k != 'sampler'}))())
  assert np.abs(x - uncond).max() < 0.01


def test_sdedit_from_an_intermediate_step_has_the_closed_form_mean_and_variance():
  kept = reverse_chains.space_timesteps(1000, 50)
  chain = _chain(50)
  start = start_index(kept, 400)  # Kept timestep <= 399.
  image = jnp.full((8000, 1, 1, 1), -0.6)
  x = np.asarray(jax.jit(lambda k: editing_chains.sdedit(
      chain.schedule, gaussian_optimal_eps(S, MU, SIGMA), image, start, k, clip_denoised=False,
      timesteps=chain.timesteps))(jax.random.PRNGKey(8)))
  abar = np.cumprod(1 - BETAS)[kept[start]]
  m, v = np.sqrt(abar) * -0.6, 1 - abar
  for a, b, s in _affine_coefficients(kept[:start + 1], 'ancestral', 'fixedlarge', 0.0):
    m, v = a * m + b, a * a * v + s * s
  assert x.mean() == pytest.approx(m, abs=5 * np.sqrt(v / x.size))
  assert x.var() == pytest.approx(v, rel=5 * np.sqrt(2 / x.size))
