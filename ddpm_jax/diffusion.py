"""The diffusion maths of Ho et al. (2020) as pure functions of a `Schedule` and arrays; the
training objectives built on them are in `ddpm_jax.objectives`.

Every function takes the precomputed `Schedule` (see `ddpm_jax.schedules`), images x of shape
(B, H, W, C) and integer timesteps t of shape (B,) with values in [0, T) (index t stands for the
paper's timestep t + 1). Nothing here knows about networks, parameters or randomness sources:
noise is passed in.

References: "the paper" = Ho, Jain & Abbeel (2020), Denoising Diffusion Probabilistic Models;
"N&D" = Nichol & Dhariwal (2021), Improved DDPM; "S&H" = Salimans & Ho (2022), Progressive
Distillation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ddpm_jax.schedules import Schedule

MEAN_TYPES = ('eps', 'x0', 'mu', 'v')
VAR_TYPES = ('fixedlarge', 'fixedsmall', 'learned', 'learned_range')
LEARNED_VAR_TYPES = ('learned', 'learned_range')


def extract(arr: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
  """arr[t] reshaped to (B, 1, ..., 1) so that it broadcasts against a rank-`ndim` batch."""
  out = jnp.take(arr, t, axis=0)
  return out.reshape(out.shape + (1,) * (ndim - 1))


def check_choice(value: str, valid, what: str) -> None:
  if value not in valid:
    raise ValueError(f'Unknown {what} {value!r}; valid: {", ".join(valid)}.')


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


def snr(schedule: Schedule, t) -> jnp.ndarray:
  """Signal-to-noise ratio of x_t, SNR(t) = alphabar_t / (1 - alphabar_t), shape (B,)."""
  abar = jnp.take(schedule.alphas_cumprod, t, axis=0)
  return abar / (1.0 - abar)


# ---------------------------------------------------------------------------------------------
# Parameterisations of the network's mean output. Given x_t, each of eps, x0, v and mu
# determines the others (they are affine in each other); everything goes through x_0.


def predict_x0_from_eps(schedule: Schedule, xt, t, eps):
  """Eq. 4 solved for x_0: x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)."""
  return (extract(schedule.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt -
          extract(schedule.sqrt_recipm1_alphas_cumprod, t, xt.ndim) * eps)


def predict_eps_from_x0(schedule: Schedule, xt, t, x0):
  """Eq. 4 solved for eps: eps = (x_t / sqrt(alphabar_t) - x_0) / sqrt(1 / alphabar_t - 1)."""
  return ((extract(schedule.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt - x0) /
          extract(schedule.sqrt_recipm1_alphas_cumprod, t, xt.ndim))


def v_from_x0_eps(schedule: Schedule, x0, eps, t):
  """S&H, Sec. 4 / appendix D: v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * eps -
          extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)


def predict_x0_from_v(schedule: Schedule, xt, t, v):
  """S&H, appendix D: x_0 = sqrt(alphabar_t) x_t - sqrt(1 - alphabar_t) v (eq. 4 and the
  definition of v, with alphabar_t + (1 - alphabar_t) = 1)."""
  return (extract(schedule.sqrt_alphas_cumprod, t, xt.ndim) * xt -
          extract(schedule.sqrt_one_minus_alphas_cumprod, t, xt.ndim) * v)


def predict_x0_from_mu(schedule: Schedule, xt, t, mu):
  """Eq. 7 solved for x_0: x_0 = (mutilde_t - coef2_t x_t) / coef1_t (the paper's code,
  `predict_start_from_prev` for the 'xprev' parameterisation)."""
  return ((mu - extract(schedule.posterior_mean_coef2, t, xt.ndim) * xt) /
          extract(schedule.posterior_mean_coef1, t, xt.ndim))


def model_output_to_x0(schedule: Schedule, mean_out, xt, t, mean_type: str):
  """The x_0 that the network's mean output of parameterisation `mean_type` stands for."""
  check_choice(mean_type, MEAN_TYPES, 'mean_type')
  if mean_type == 'eps':
    return predict_x0_from_eps(schedule, xt, t, mean_out)
  if mean_type == 'x0':
    return mean_out
  if mean_type == 'v':
    return predict_x0_from_v(schedule, xt, t, mean_out)
  return predict_x0_from_mu(schedule, xt, t, mean_out)


def split_model_output(model_output, var_type: str):
  """(mean part, variance part or None): a learned-variance network outputs 2 * C channels,
  the first C for the mean parameterisation, the last C for the variance."""
  check_choice(var_type, VAR_TYPES, 'var_type')
  if var_type in LEARNED_VAR_TYPES:
    return tuple(jnp.split(model_output, 2, axis=-1))
  return model_output, None


def model_variance(schedule: Schedule, t, ndim: int, var_type: str, var_out=None):
  """Variance sigma_t^2 of p(x_{t-1} | x_t). Returns (variance, log_variance) broadcastable
  against a rank-`ndim` batch (per pixel for the learned types).

  fixedsmall: sigma_t^2 = betatilde_t (Sec. 3.2; the posterior variance, optimal for x_0 a
              point mass).
  fixedlarge: sigma_t^2 = beta_t (optimal for x_0 ~ N(0, I)), with the first entry replaced by
              betatilde_2 so that the log stays finite and the last step has a sensible
              variance, as in the paper's code.
  learned:    log sigma_t^2 = `var_out` (the network outputs the log-variance directly).
  learned_range: N&D eq. 15, sigma_t^2 = exp(v log beta_t + (1 - v) log betatilde_t), with
              v = (var_out + 1) / 2 so that an output in [-1, 1] spans [betatilde_t, beta_t];
              as in N&D, v is not constrained (betatilde_1 is the clipped value).
  """
  check_choice(var_type, VAR_TYPES, 'var_type')
  if var_type == 'fixedsmall':
    return (extract(schedule.posterior_variance, t, ndim),
            extract(schedule.posterior_log_variance_clipped, t, ndim))
  if var_type == 'fixedlarge':
    variance = jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
    return extract(variance, t, ndim), extract(jnp.log(variance), t, ndim)
  if var_out is None:
    raise ValueError(f'var_type {var_type!r} needs the variance output of the network.')
  var_out = var_out.astype(jnp.float32)
  if var_type == 'learned':
    log_variance = var_out
  else:
    frac = (var_out + 1.0) / 2.0
    min_log = extract(schedule.posterior_log_variance_clipped, t, ndim)
    max_log = extract(jnp.log(schedule.betas), t, ndim)
    log_variance = frac * max_log + (1.0 - frac) * min_log
  return jnp.exp(log_variance), log_variance


class PMeanVariance(NamedTuple):
  mean: jnp.ndarray
  variance: jnp.ndarray
  log_variance: jnp.ndarray
  pred_x0: jnp.ndarray


def p_mean_variance(schedule: Schedule, model_output, xt, t, var_type: str = 'fixedlarge',
                    clip: bool = True, mean_type: str = 'eps') -> PMeanVariance:
  """Mean and variance of the reverse step p_theta(x_{t-1} | x_t) (eq. 1, Sec. 3.2).

  For `eps`, `x0` and `v` the network's mean output is turned into a prediction of x_0,
  optionally clipped to the data range [-1, 1], and the mean is the posterior mean of eq. 7 at
  that x_0. For `eps` this equals eq. 11, mu = (x_t - beta_t / sqrt(1 - alphabar_t) eps) /
  sqrt(alpha_t), when no clipping applies. For `mu` the output is the mean itself (clipping
  then only affects the reported `pred_x0`, as in the paper's code). The variance comes from
  `model_variance` (the last C output channels for the learned types).
  """
  mean_out, var_out = split_model_output(model_output.astype(jnp.float32), var_type)
  pred_x0 = model_output_to_x0(schedule, mean_out, xt, t, mean_type)
  if clip:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean = mean_out if mean_type == 'mu' else q_posterior_mean_variance(schedule, pred_x0, xt, t)[0]
  variance, log_variance = model_variance(schedule, t, xt.ndim, var_type, var_out)
  return PMeanVariance(mean, variance, log_variance, pred_x0)


# ---------------------------------------------------------------------------------------------
# The variational bound (eq. 5), in bits per dimension like the paper's code.


def mean_flat(x):
  """Mean over every axis but the first (the batch axis)."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats:
  0.5 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) +
                jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF used by the paper's code (and
  PixelCNN++): 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Eq. 13: log p(x_0 | x_1) per pixel for data on the 256 levels {-1, -1 + 2/255, .., 1}.

  Each level owns the bin [x - 1/255, x + 1/255] of N(means, exp(log_scales)^2), the two edge
  bins extend to -inf and +inf, so the probabilities of the 256 levels sum to 1. Returns log
  probabilities in nats, shape of x.
  """
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class VLBTerms(NamedTuple):
  """Per-example terms in bits/dim, shape (B,): `vlb` = L_{t-1} of eq. 5, i.e. `kl` =
  KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 1 and `decoder_nll` = -log p(x_0 | x_1)
  (eq. 13) at t = 1; `pred_x0` is the model's x_0 prediction."""
  vlb: jnp.ndarray
  kl: jnp.ndarray
  decoder_nll: jnp.ndarray
  pred_x0: jnp.ndarray


def vlb_terms(schedule: Schedule, model_output, x0, xt, t, *, mean_type: str = 'eps',
              var_type: str = 'fixedlarge', clip: bool = False) -> VLBTerms:
  """The term L_{t-1} of the variational bound (eq. 5) for each example, in bits/dim.

  t > 0 (the paper's t > 1): KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) of two
  Gaussians (eqs. 6-7 and `p_mean_variance`). t = 0: the discretised decoder -log p(x_0 | x_1)
  of eq. 13 with p's mean and standard deviation. Averaged over the dimensions and divided by
  log 2, as the paper's code does (`_vb_terms_bpd`). The prior term L_T is `prior_bpd`.
  """
  true_mean, _, true_log_var = q_posterior_mean_variance(schedule, x0, xt, t)
  p = p_mean_variance(schedule, model_output, xt, t, var_type=var_type, clip=clip,
                      mean_type=mean_type)
  kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / math.log(2.0)
  nll = -discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)
  nll = mean_flat(nll) / math.log(2.0)
  return VLBTerms(jnp.where(t == 0, nll, kl), kl, nll, p.pred_x0)


def prior_bpd(schedule: Schedule, x0):
  """L_T of eq. 5: KL(q(x_T | x_0) || N(0, I)) per example in bits/dim (no parameters; ~1e-5
  for the linear T = 1000 schedule on data in [-1, 1])."""
  t = jnp.full((x0.shape[0],), schedule.num_timesteps - 1, jnp.int32)
  mean, _, log_var = q_mean_variance(schedule, x0, t)
  return mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / math.log(2.0)
