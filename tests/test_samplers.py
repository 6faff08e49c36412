"""Algorithm 2 with denoisers whose optimum is known in closed form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import samplers, schedules

S = schedules.make_schedule('linear', 1000)


def gaussian_optimal_eps(schedule, mu, sigma):
  """E[eps | x_t] when x_0 ~ N(mu, sigma^2) per pixel: the ideal eps-predictor."""

  def denoise(xt, t):
    abar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (xt.ndim - 1))
    return jnp.sqrt(1 - abar) * (xt - jnp.sqrt(abar) * mu) / (abar * sigma**2 + 1 - abar)

  return denoise


@functools.partial(jax.jit, static_argnames=('shape', 'var_type', 'clip', 'mu', 'sigma'))
def _sample(key, shape, var_type, clip, mu, sigma):
  return samplers.ancestral_sample(S, gaussian_optimal_eps(S, mu, sigma), shape, key,
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
  run = jax.jit(lambda k: samplers.ancestral_sample(
      schedules.make_schedule('linear', 50), denoise, (4, 8, 8, 3), k, clip_denoised=True))
  a, b, c = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1))
  assert a.shape == (4, 8, 8, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(jnp.min(a)) >= -1.0 and float(jnp.max(a)) <= 1.0
