"""Samplers: the whole reverse chain runs inside one `jax.lax.scan`, never a host loop.

A `denoise_fn(x_t, t) -> model_output` closes over the network and its parameters; the samplers
only know the `Schedule` and the maths of `ddpm_jax.diffusion`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddpm_jax import diffusion
from ddpm_jax.schedules import Schedule

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def p_sample(schedule: Schedule, denoise_fn: DenoiseFn, xt, t, noise, *, var_type: str,
             mean_type: str = 'eps', clip_denoised: bool = True):
  """One step of Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with z = 0 at t = 1.

  `t` is a (B,) int array (index 0 is the paper's t = 1); `noise` has the shape of x_t.
  Returns (x_{t-1}, predicted x_0).
  """
  out = diffusion.p_mean_variance(schedule, denoise_fn(xt, t), xt, t, var_type=var_type,
                                  clip=clip_denoised, mean_type=mean_type)
  nonzero = (t != 0).astype(xt.dtype).reshape((-1,) + (1,) * (xt.ndim - 1))
  return out.mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise, out.pred_x0


def ancestral_sample(schedule: Schedule, denoise_fn: DenoiseFn, shape, key, *,
                     var_type: str = 'fixedlarge', mean_type: str = 'eps',
                     clip_denoised: bool = True, x_T=None):
  """Algorithm 2 of Ho et al. (2020): x_T ~ N(0, I), then T steps of `p_sample` down to x_0.

  The step-t noise is drawn from `fold_in(key, t)`, so a chain is a pure function of `key`.
  Call this under `jax.jit`; the loop is a `lax.scan` over t = T-1 .. 0.
  """
  key_init, key_chain = jax.random.split(key)
  x = jax.random.normal(key_init, shape, jnp.float32) if x_T is None else x_T
  batch = shape[0]

  def step(x, t):
    noise = jax.random.normal(jax.random.fold_in(key_chain, t), shape, jnp.float32)
    x, _ = p_sample(schedule, denoise_fn, x, jnp.full((batch,), t, jnp.int32), noise,
                    var_type=var_type, mean_type=mean_type, clip_denoised=clip_denoised)
    return x, None

  ts = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  x, _ = jax.lax.scan(step, x, ts)
  return x
