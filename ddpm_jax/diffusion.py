"""The diffusion maths of Ho et al. (2020) as pure functions of a `Schedule` and arrays.

Every function takes the precomputed `Schedule` (see `ddpm_jax.schedules`), images x of shape
(B, H, W, C) and integer timesteps t of shape (B,) with values in [0, T) (index t stands for the
paper's timestep t + 1). Nothing here knows about networks, parameters or randomness sources:
noise is passed in.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from ddpm_jax.schedules import Schedule

MEAN_TYPES = ('eps', 'x0')
VAR_TYPES = ('fixedlarge', 'fixedsmall')
LOSS_TYPES = ('mse',)


def extract(arr: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """arr[t] reshaped to (B, 1, ..., 1) so that it broadcasts against a rank-`ndim` batch."""
  out = jnp.take(arr, t, axis=0)
  return out.reshape(out.shape + (1,) * (ndim - 1))


# ---------------------------------------------------------------------------------------------
# Forward process.


def q_mean_variance(schedule: Schedule, x0, t):
  """Mean, variance and log variance of q(x_t | x_0) = N(sqrt(alphabar_t) x_0, 1 - alphabar_t)."""
  mean = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
  variance = extract(jnp.square(schedule.sqrt_one_minus_alphas_cumprod), t, x0.ndim)
  log_variance = extract(schedule.log_one_minus_alphas_cumprod, t, x0.ndim)
  return mean, variance, log_variance


def q_sample(schedule: Schedule, x0, t, noise):
  """Eq. 4: x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, a sample of q(x_t | x_0)."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0 +
          extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def q_posterior_mean_variance(schedule: Schedule, x0, xt, t):
  """Eqs. 6-7: q(x_{t-1} | x_t, x_0) = N(mutilde_t(x_t, x_0), betatilde_t I).

  Returns (mean, variance, log_variance_clipped).
  """
  mean = (extract(schedule.posterior_mean_coef1, t, xt.ndim) * x0 +
          extract(schedule.posterior_mean_coef2, t, xt.ndim) * xt)
  variance = extract(schedule.posterior_variance, t, xt.ndim)
  log_variance = extract(schedule.posterior_log_variance_clipped, t, xt.ndim)
  return mean, variance, log_variance


# ---------------------------------------------------------------------------------------------
# Parameterisations of the reverse process.


def predict_x0_from_eps(schedule: Schedule, xt, t, eps):
  """Eq. 4 solved for x_0: x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)."""
  return (extract(schedule.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt -
          extract(schedule.sqrt_recipm1_alphas_cumprod, t, xt.ndim) * eps)


def predict_eps_from_x0(schedule: Schedule, xt, t, x0):
  """Eq. 4 solved for eps: eps = (x_t / sqrt(alphabar_t) - x_0) / sqrt(1 / alphabar_t - 1)."""
  return ((extract(schedule.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt - x0) /
          extract(schedule.sqrt_recipm1_alphas_cumprod, t, xt.ndim))


def model_variance(schedule: Schedule, t, ndim: int, var_type: str):
  """Variance sigma_t^2 of p(x_{t-1} | x_t) for the fixed choices of Sec. 3.2.

  fixedsmall: sigma_t^2 = betatilde_t (the posterior variance; exact for x_0 a point mass).
  fixedlarge: sigma_t^2 = beta_t (optimal for x_0 ~ N(0, I)), with the first entry replaced by
              betatilde_2 so that the log stays finite and the last step has a sensible
              variance, as in the paper's code.
  Returns (variance, log_variance) broadcastable against a rank-`ndim` batch.
  """
  if var_type == 'fixedsmall':
    return (extract(schedule.posterior_variance, t, ndim),
            extract(schedule.posterior_log_variance_clipped, t, ndim))
  if var_type == 'fixedlarge':
    variance = jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
    return extract(variance, t, ndim), extract(jnp.log(variance), t, ndim)
  raise ValueError(f'Unknown var_type {var_type!r}; valid: {", ".join(VAR_TYPES)}.')


class PMeanVariance(NamedTuple):
  mean: jnp.ndarray
  variance: jnp.ndarray
  log_variance: jnp.ndarray
  pred_x0: jnp.ndarray


def p_mean_variance(schedule: Schedule, model_output, xt, t, var_type: str = 'fixedlarge',
                    clip: bool = True, mean_type: str = 'eps') -> PMeanVariance:
  """Mean and variance of the reverse step p_theta(x_{t-1} | x_t) (eq. 1, Sec. 3.2).

  The network's output is turned into a prediction of x_0 (eq. 4 inverted for `eps`, used
  directly for `x0`), optionally clipped to the data range [-1, 1], and the mean is the
  posterior mean of eq. 7 at that x_0. For `eps` this equals eq. 11,
  mu = (x_t - beta_t / sqrt(1 - alphabar_t) eps) / sqrt(alpha_t), when no clipping applies.
  """
  if mean_type == 'eps':
    pred_x0 = predict_x0_from_eps(schedule, xt, t, model_output)
  elif mean_type == 'x0':
    pred_x0 = model_output
  else:
    raise ValueError(f'Unknown mean_type {mean_type!r}; valid: {", ".join(MEAN_TYPES)}.')
  if clip:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, xt, t)
  variance, log_variance = model_variance(schedule, t, xt.ndim, var_type)
  return PMeanVariance(mean, variance, log_variance, pred_x0)


# ---------------------------------------------------------------------------------------------
# Training objective.


def mean_flat(x):
  """Mean over every axis but the first (the batch axis)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def simple_loss(model_output, x0, noise, mean_type: str = 'eps'):
  """L_simple of eq. 14, per example: || eps - eps_theta(x_t, t) ||^2 averaged over pixels.

  With `mean_type='x0'` the network predicts x_0 and the target is x_0 instead (the paper's
  Table 2 alternative). Returns shape (B,).
  """
  if mean_type == 'eps':
    target = noise
  elif mean_type == 'x0':
    target = x0
  else:
    raise ValueError(f'Unknown mean_type {mean_type!r}; valid: {", ".join(MEAN_TYPES)}.')
  return mean_flat(jnp.square(model_output.astype(jnp.float32) - target))
