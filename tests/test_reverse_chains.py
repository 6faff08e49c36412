"""Algorithm 2 with denoisers whose optimum is known in closed form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import reverse_chains, schedules
from test_diffusion import convert_model_output

S = schedules.make_schedule('linear', 1000)


def gaussian_optimal_eps(schedule, mu, sigma):
  """E[eps | x_t] when x_0 ~ N(mu, sigma^2) per pixel: the ideal eps-predictor."""

  def denoise(xt, t):
    abar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (xt.ndim - 1))
    return jnp.sqrt(1 - abar) * (xt - jnp.sqrt(abar) * mu) / (abar * sigma**2 + 1 - abar)

  return denoise


@functools.partial(jax.jit, static_argnames=('shape', 'var_type', 'clip', 'mu', 'sigma'))
def _sample(key, shape, var_type, clip, mu, sigma):
  return reverse_chains.sample('ancestral', S, gaussian_optimal_eps(S, mu, sigma), shape, key,
                               var_type=var_type, clip_denoised=clip)


@pytest.mark.parametrize('var_type', ['fixedlarge', 'fixedsmall'])
def test_ancestral_sampling_recovers_a_gaussian(var_type):
  # Data N(0.3, 0.2^2): with the exact eps-predictor the chain's samples must have that law.
  x = np.asarray(_sample(jax.random.PRNGKey(0), (4000, 2, 2, 1), var_type, False, 0.3, 0.2))
  assert x.mean() == pytest.approx(0.3, abs=0.01)
  assert x.std() == pytest.approx(0.2, rel=0.05)


def test_point_mass_data_is_reproduced_exactly():
  # sigma -> 0: the predicted x_0 is the data point itself, and the last step returns it.
  x = np.asarray(_sample(jax.random.PRNGKey(1), (8, 4, 4, 3), 'fixedlarge', True, -0.5, 0.0))
  np.testing.assert_allclose(x, -0.5, atol=1e-4)


def test_sampling_is_deterministic_in_key_and_clipped():
  denoise = lambda x, t: 3.0 * jnp.sin(x + t[:, None, None, None])  # An arbitrary bad model.
  run = jax.jit(lambda k: reverse_chains.sample(
      'ancestral', schedules.make_schedule('linear', 50), denoise, (4, 8, 8, 3), k,
      clip_denoised=True))
  a, b, c = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1))
  assert a.shape == (4, 8, 8, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(jnp.min(a)) >= -1.0 and float(jnp.max(a)) <= 1.0


# ---------------------------------------------------------------------------------------------
# Respacing, DDIM and DDIM inversion. Toy data x_0 ~ N(MU, SIGMA^2) per pixel, for which the
# optimal eps-predictor is known in closed form, so every chain is affine in x plus Gaussian
# noise and its output moments can also be computed exactly in NumPy (float64).

BETAS = schedules.make_betas('linear', 1000)
MU, SIGMA = 0.3, 0.5


def _chain(steps):
  return reverse_chains.respace(BETAS, reverse_chains.space_timesteps(1000, steps))


def test_space_timesteps():
  np.testing.assert_array_equal(reverse_chains.space_timesteps(1000, 0), np.arange(1000))
  np.testing.assert_array_equal(reverse_chains.space_timesteps(1000, 1000), np.arange(1000))
  kept = reverse_chains.space_timesteps(1000, 50)
  assert len(kept) == 50 and kept[0] == 0 and kept[-1] == 999 and np.all(np.diff(kept) > 0)
  np.testing.assert_array_equal(reverse_chains.space_timesteps(1000, 1), [999])
  with pytest.raises(ValueError, match='sample.steps'):
    reverse_chains.space_timesteps(1000, 1001)


@pytest.mark.parametrize('kept', [reverse_chains.space_timesteps(1000, 250),
                                  reverse_chains.space_timesteps(1000, 50), [999],
                                  [3, 17, 400, 999], np.arange(1000)])
def test_respaced_betas_reproduce_alphas_cumprod_at_kept_steps(kept):
  chain = reverse_chains.respace(BETAS, kept)
  abar = np.cumprod(1 - BETAS)
  np.testing.assert_allclose(chain.schedule.alphas_cumprod, abar[np.asarray(kept)], rtol=1e-6)
  prev = np.concatenate([[1.0], abar[np.asarray(kept)[:-1]]])  # Previous *kept* step.
  np.testing.assert_allclose(chain.schedule.alphas_cumprod_prev, prev, rtol=1e-6)
  np.testing.assert_array_equal(chain.timesteps, kept)


def test_respacing_with_every_step_is_the_identity_bit_for_bit():
  chain = _chain(1000)
  for name in S.__dataclass_fields__:
    np.testing.assert_array_equal(getattr(chain.schedule, name), getattr(S, name), name)
  denoise = gaussian_optimal_eps(S, MU, SIGMA)
  shape = (16, 4, 4, 1)
  plain = jax.jit(lambda k: reverse_chains.sample('ancestral', S, denoise, shape, k))
  respaced = jax.jit(lambda k: reverse_chains.sample(
      'ancestral', chain.schedule, denoise, shape, k, timesteps=chain.timesteps))
  np.testing.assert_array_equal(plain(jax.random.PRNGKey(3)), respaced(jax.random.PRNGKey(3)))


def _affine_coefficients(kept, sampler, var_type, eta):
  """NumPy float64: for each chain step (last kept step first), x_prev = a x + b + s z."""
  abar_all = np.cumprod(1 - BETAS)
  kept = np.asarray(kept)
  out = []
  for i in range(len(kept) - 1, -1, -1):
    a_t = abar_all[kept[i]]
    a_p = abar_all[kept[i - 1]] if i > 0 else 1.0
    # The optimal predictions are affine in x: eps = ce x + de, x0 = c0 x + d0.
    den = a_t * SIGMA**2 + 1 - a_t
    ce, de = np.sqrt(1 - a_t) / den, -np.sqrt(1 - a_t) * np.sqrt(a_t) * MU / den
    c0, d0 = (1 - np.sqrt(1 - a_t) * ce) / np.sqrt(a_t), -np.sqrt(1 - a_t) * de / np.sqrt(a_t)
    beta = 1 - a_t / a_p
    post_var = beta * (1 - a_p) / (1 - a_t)
    if sampler == 'ancestral':
      k1, k2 = np.sqrt(a_p) * beta / (1 - a_t), np.sqrt(1 - beta) * (1 - a_p) / (1 - a_t)
      a, b = k1 * c0 + k2, k1 * d0
      if var_type == 'fixedsmall':
        var = post_var
      else:  # fixedlarge: beta, except betatilde of the second kept step at the first.
        a2, a2p = abar_all[kept[1]], abar_all[kept[0]]
        var = beta if i > 0 else (1 - a2 / a2p) * (1 - a2p) / (1 - a2)
      s = np.sqrt(var) if i > 0 else 0.0
    else:
      s = eta * np.sqrt(post_var)
      k = np.sqrt(max(1 - a_p - s**2, 0.0))
      a, b = np.sqrt(a_p) * c0 + k * ce, np.sqrt(a_p) * d0 + k * de
    out.append((a, b, s))
  return out


def _exact_moments(kept, sampler, var_type='fixedlarge', eta=0.0):
  m, v = 0.0, 1.0
  for a, b, s in _affine_coefficients(kept, sampler, var_type, eta):
    m, v = a * m + b, a * a * v + s * s
  return m, np.sqrt(v)


@functools.partial(jax.jit, static_argnames=('sampler', 'steps', 'var_type', 'eta'))
def _toy_samples(key, sampler, steps, var_type, eta):
  chain = _chain(steps)
  return reverse_chains.sample(sampler, chain.schedule, gaussian_optimal_eps(S, MU, SIGMA),
                               (4000, 2, 2, 1), key, eta=eta, var_type=var_type,
                               clip_denoised=False, timesteps=chain.timesteps)


# Stated tolerances against the data N(0.3, 0.5^2): |mean error| < 0.02 everywhere; std within
# 5% at >= 250 steps and 15% at 50 steps. These bound the discretisation error of the chains
# themselves: their exact output std (`_exact_moments`) is off by +0.2 / +0.7 / +3.5% at
# 1000 / 250 / 50 steps for ancestral fixedlarge, -0.3 / -1.1 / -5.6% for DDIM eta = 0 and
# -0.8 / -2.8 / -11.4% for DDIM eta = 1 (= ancestral with sigma^2 = betatilde).
@pytest.mark.parametrize('sampler,steps,var_type,eta', [
    ('ancestral', 1000, 'fixedlarge', 0.0), ('ancestral', 250, 'fixedlarge', 0.0),
    ('ancestral', 50, 'fixedlarge', 0.0), ('ancestral', 50, 'fixedsmall', 0.0),
    ('ddim', 250, 'fixedlarge', 0.0), ('ddim', 50, 'fixedlarge', 0.0),
    ('ddim', 250, 'fixedlarge', 1.0), ('ddim', 50, 'fixedlarge', 1.0)])
def test_every_sampler_recovers_the_toy_gaussian(sampler, steps, var_type, eta):
  x = np.asarray(_toy_samples(jax.random.PRNGKey(steps), sampler, steps, var_type, eta),
                 np.float64)
  # 1. The chain is exactly the discrete chain it should be (catches alphabar[t-1] bugs).
  m, sd = _exact_moments(_chain(steps).timesteps, sampler, var_type, eta)
  assert x.mean() == pytest.approx(m, abs=4 * sd / np.sqrt(x.size) + 1e-3)
  assert x.std() == pytest.approx(sd, rel=0.03)
  # 2. And its samples have the data's moments, within the stated tolerance.
  assert x.mean() == pytest.approx(MU, abs=0.02)
  assert x.std() == pytest.approx(SIGMA, rel=0.05 if steps >= 250 else 0.15)


def test_ddim_eta1_is_the_ancestral_step_with_posterior_variance():
  chain = _chain(50)
  denoise = gaussian_optimal_eps(S, MU, SIGMA)
  kw = dict(timesteps=chain.timesteps, clip_denoised=True)
  run = jax.jit(lambda k: (
      reverse_chains.sample('ddim', chain.schedule, denoise, (64, 2, 2, 1), k, eta=1.0, **kw),
      reverse_chains.sample('ancestral', chain.schedule, denoise, (64, 2, 2, 1), k,
                            var_type='fixedsmall', **kw)))
  ddim, ancestral = run(jax.random.PRNGKey(0))
  np.testing.assert_allclose(ddim, ancestral, atol=2e-4)


def test_ddim_step_uses_the_previous_kept_step():
  chain = _chain(50)
  kept = np.asarray(chain.timesteps)
  abar = np.cumprod(1 - BETAS)
  x0, eps, noise = jnp.full((1, 1), 0.2), jnp.full((1, 1), -0.7), jnp.full((1, 1), 0.4)
  for i in (1, 17, 49):
    got = reverse_chains.ddim_step(chain.schedule, x0, eps, jnp.array([i]), 0.5, noise)
    a_t, a_p = abar[kept[i]], abar[kept[i - 1]]
    sig = 0.5 * np.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    want = np.sqrt(a_p) * 0.2 + np.sqrt(1 - a_p - sig**2) * -0.7 + sig * 0.4
    assert float(got[0, 0]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize('steps,max_mse', [(1000, 2e-5), (250, 2e-4), (50, 5e-3)])
def test_ddim_inversion_then_generation_reconstructs_the_input(steps, max_mse):
  chain = _chain(steps)
  denoise = gaussian_optimal_eps(S, MU, SIGMA)
  x0 = MU + SIGMA * jax.random.normal(jax.random.PRNGKey(1), (256, 2, 2, 1))
  kw = dict(timesteps=chain.timesteps, clip_denoised=False)
  run = jax.jit(lambda x: (lambda x_T: (x_T, reverse_chains.sample(
      'ddim', chain.schedule, denoise, x.shape, jax.random.PRNGKey(0), eta=0.0, x_T=x_T,
      **kw)))(reverse_chains.ddim_encode(chain.schedule, denoise, x, **kw)))
  x_T, rec = (np.asarray(a, np.float64) for a in run(x0))
  assert x_T.std() == pytest.approx(1.0, abs=0.1)  # The latent is noise-like.
  mse = np.mean((rec - np.asarray(x0)) ** 2)
  assert mse < max_mse, mse
  # The closed form of the two affine maps gives the same reconstruction.
  kept = chain.timesteps
  abar_all = np.cumprod(1 - BETAS)
  y = np.asarray(x0, np.float64)
  for i in range(len(kept) - 1):  # Encoder: x_{i+1} = sqrt(a') x0(x_i) + sqrt(1 - a') eps(x_i).
    a_t, a_n = abar_all[kept[i]], abar_all[kept[i + 1]]
    eps = np.sqrt(1 - a_t) * (y - np.sqrt(a_t) * MU) / (a_t * SIGMA**2 + 1 - a_t)
    y = np.sqrt(a_n) * (y - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t) + np.sqrt(1 - a_n) * eps
  np.testing.assert_allclose(x_T, y, atol=1e-3 * max(1.0, np.abs(y).max()))
  for a, b, _ in _affine_coefficients(kept, 'ddim', 'fixedlarge', 0.0):
    y = a * y + b
  np.testing.assert_allclose(rec, y, atol=1e-3)


def test_trajectory_and_start_index():
  chain = _chain(50)
  denoise = gaussian_optimal_eps(S, MU, 0.0)  # Point mass: pred_x0 is exact at every step.
  x, traj = jax.jit(lambda k: reverse_chains.sample(
      'ancestral', chain.schedule, denoise, (3, 2, 2, 1), k, timesteps=chain.timesteps,
      save_at=[49, 20, 0]))(jax.random.PRNGKey(0))
  assert traj['xt'].shape == traj['pred_x0'].shape == (3, 3, 2, 2, 1)
  np.testing.assert_allclose(traj['pred_x0'], MU, atol=1e-3)
  np.testing.assert_allclose(x, MU, atol=1e-4)
  # x_T is noise; the last input x_1 carries noise of std sqrt(beta'_2) = 0.08 only.
  assert float(jnp.std(traj['xt'][0])) > 0.5 and float(jnp.std(traj['xt'][2])) < 0.15
  # Starting mid-chain from a given x_t runs only the remaining steps.
  x_mid = jnp.full((3, 2, 2, 1), 5.0)
  out = reverse_chains.sample('ddim', chain.schedule, denoise, x_mid.shape,
                              jax.random.PRNGKey(0), x_T=x_mid, start_index=0,
                              timesteps=chain.timesteps, clip_denoised=False)
  # One step from index 0 returns x0 (to the float32 precision of 1 - alphabar_1 = 1e-4 that
  # the test denoiser computes from the stored alphabar).
  np.testing.assert_allclose(out, MU, atol=2e-3)


def test_mu_network_in_a_respaced_chain_goes_through_x0():
  chain = _chain(50)
  eps_fn = gaussian_optimal_eps(S, MU, SIGMA)
  mu_fn = lambda x, t: convert_model_output(S, eps_fn(x, t), x, t, 'eps', 'mu')
  with pytest.raises(ValueError, match='as_x0_denoiser'):
    reverse_chains.sample('ancestral', chain.schedule, mu_fn, (4, 2, 2, 1),
                          jax.random.PRNGKey(0), mean_type='mu', timesteps=chain.timesteps)
  x0_fn = reverse_chains.as_x0_denoiser(S, mu_fn, 'mu', 'fixedlarge')
  kw = dict(timesteps=chain.timesteps, clip_denoised=False)
  run = jax.jit(lambda k: (
      reverse_chains.sample('ancestral', chain.schedule, eps_fn, (64, 2, 2, 1), k, **kw),
      reverse_chains.sample('ancestral', chain.schedule, x0_fn, (64, 2, 2, 1), k,
                            mean_type='x0', **kw)))
  a, b = run(jax.random.PRNGKey(0))
  np.testing.assert_allclose(a, b, atol=2e-3)
