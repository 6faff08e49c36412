"""The training objectives of a DDPM, per example, on the maths of `ddpm_jax.diffusion`:
L_simple (eq. 14) for every parameterisation, the true bound L_vlb, L_hybrid, min-SNR
weighting, and importance sampling of t for L_vlb.

References as in `ddpm_jax.diffusion`, and "Hang et al." = Efficient Diffusion Training via
Min-SNR Weighting (2023).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ddpm_jax import diffusion
from ddpm_jax.diffusion import mean_flat
from ddpm_jax.schedules import Schedule

LOSS_TYPES = ('mse', 'kl', 'hybrid')


def mean_target(schedule: Schedule, x0, xt, t, noise, mean_type: str):
  """Regression target of the mean output for a training example (x_0, eps, x_t = eq. 4):
  eps (eq. 14), x_0, v = sqrt(alphabar) eps - sqrt(1 - alphabar) x_0 (S&H), or the posterior
  mean mutilde_t(x_t, x_0) of eq. 7 ('mu', the paper's Sec. 3.2 alternative)."""
  diffusion.check_choice(mean_type, diffusion.MEAN_TYPES, 'mean_type')
  if mean_type == 'eps':
    return noise
  if mean_type == 'x0':
    return x0
  if mean_type == 'v':
    return diffusion.v_from_x0_eps(schedule, x0, noise, t)
  return diffusion.q_posterior_mean_variance(schedule, x0, xt, t)[0]


def simple_loss(schedule: Schedule, mean_out, x0, xt, t, noise, mean_type: str = 'eps'):
  """L_simple of eq. 14, per example: || eps - eps_theta(x_t, t) ||^2 averaged over pixels,
  for every parameterisation: the squared error of the mean output against its `mean_target`
  (x_0 for 'x0' is the paper's Table 2 alternative). Returns shape (B,)."""
  target = mean_target(schedule, x0, xt, t, noise, mean_type)
  return mean_flat(jnp.square(mean_out.astype(jnp.float32) - target))


def min_snr_weight(schedule: Schedule, t, mean_type: str, gamma: float):
  """Hang et al. (2023), eq. 13 / Sec. 3.4: weight each example's MSE so that the loss equals
  min(SNR(t), gamma) || x_0 - x0_theta ||^2 whatever the target: min(SNR, gamma) / SNR for eps,
  min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1) for v. Shape (B,)."""
  s = diffusion.snr(schedule, t)
  clipped = jnp.minimum(s, gamma)
  if mean_type == 'eps':
    return clipped / s
  if mean_type == 'x0':
    return clipped
  if mean_type == 'v':
    return clipped / (s + 1.0)
  raise ValueError(f'min-SNR weighting is defined for the eps, x0 and v targets, not '
                   f'{mean_type!r}.')


def training_losses(schedule: Schedule, model_output, x0, xt, t, noise, *,
                    mean_type: str = 'eps', var_type: str = 'fixedlarge', loss_type: str = 'mse',
                    hybrid_lambda: float = 0.001, min_snr_gamma: float = 0.0) -> dict:
  """Per-example training losses, shape (B,) each. `loss` is what is minimised:

  mse:    L_simple (eq. 14) generalised to every target (`mean_target`), optionally weighted
          by `min_snr_weight` when min_snr_gamma > 0. A learned variance gets no gradient.
  kl:     L_{t-1} of the true bound (eq. 5, `vlb_terms`) in bits/dim. With t uniform its
          expectation is (L_vlb - L_T) / T; the paper's code uses the same scale.
  hybrid: N&D Sec. 3.1, L_simple + lambda L_vlb with the mean's gradient stopped inside L_vlb
          (so L_vlb only trains the variance). L_vlb = sum_t L_t is estimated by T L_{t-1}, so
          the per-example loss is mse + lambda T vlb (N&D: lambda = 0.001; with a fixed
          variance this equals mse in gradient).
  Also returns `mse` and `vlb` where computed.
  """
  diffusion.check_choice(loss_type, LOSS_TYPES, 'loss type')
  mean_out, var_out = diffusion.split_model_output(model_output.astype(jnp.float32), var_type)
  out = {}
  if loss_type in ('mse', 'hybrid'):
    mse = simple_loss(schedule, mean_out, x0, xt, t, noise, mean_type)
    if min_snr_gamma > 0:
      mse = mse * min_snr_weight(schedule, t, mean_type, min_snr_gamma)
    out['mse'] = out['loss'] = mse
  if loss_type in ('kl', 'hybrid'):
    frozen = model_output.astype(jnp.float32)
    if loss_type == 'hybrid':
      frozen = jax.lax.stop_gradient(mean_out)
      if var_out is not None:
        frozen = jnp.concatenate([frozen, var_out], axis=-1)
    vlb = diffusion.vlb_terms(schedule, frozen, x0, xt, t, mean_type=mean_type,
                              var_type=var_type, clip=False).vlb
    out['vlb'] = vlb
    out['loss'] = vlb if loss_type == 'kl' else mse + hybrid_lambda * schedule.num_timesteps * vlb
  return out


# ---------------------------------------------------------------------------------------------
# Importance sampling of t (N&D Sec. 3.3, `LossSecondMomentResampler` of improved-diffusion):
# p_t proportional to sqrt(E[L_t^2]) over the last `history` losses seen at each t, mixed
# with a small uniform part, used once every t has a full history; the loss at t is then
# weighted by 1 / (T p_t) so that its expectation is unchanged.


def init_loss_history(num_timesteps: int, history: int = 10) -> dict:
  """An empty history: `losses` (T, history) float32 and `counts` (T,) int32."""
  return {'losses': jnp.zeros((num_timesteps, history), jnp.float32),
          'counts': jnp.zeros((num_timesteps,), jnp.int32)}


def update_loss_history(loss_history: dict, t, losses) -> dict:
  """Append each example's loss to the history of its t, in batch order; a full history drops
  its oldest entry. Pure; `t` (B,) int, `losses` (B,)."""
  hist, counts = loss_history['losses'], loss_history['counts']
  size = hist.shape[1]

  def body(i, carry):
    hist, counts = carry
    ti, li = t[i], losses[i].astype(jnp.float32)
    row, c = hist[ti], counts[ti]
    shifted = jnp.concatenate([row[1:], li[None]])
    row = jnp.where(c < size, row.at[jnp.minimum(c, size - 1)].set(li), shifted)
    return hist.at[ti].set(row), counts.at[ti].set(jnp.minimum(c + 1, size))

  hist, counts = jax.lax.fori_loop(0, t.shape[0], body, (hist, counts))
  return {'losses': hist, 'counts': counts}


def importance_probs(loss_history: dict, uniform_prob: float = 0.001):
  """p_t: uniform until every t has a full history, then proportional to sqrt(mean L_t^2),
  mixed as (1 - uniform_prob) p + uniform_prob / T. Shape (T,), sums to 1."""
  hist, counts = loss_history['losses'], loss_history['counts']
  num_timesteps = hist.shape[0]
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
  w = jnp.sqrt(jnp.mean(jnp.square(hist), axis=-1))
  w = w / jnp.maximum(jnp.sum(w), 1e-30)
  p = (1.0 - uniform_prob) * w + uniform_prob / num_timesteps
  warm = jnp.all(counts == hist.shape[1]) & (jnp.sum(w) > 0)
  return jnp.where(warm, p, uniform)


def sample_timesteps_importance(key, loss_history: dict, batch_size: int):
  """t ~ p (`importance_probs`) and the loss weights 1 / (T p_t). Returns ((B,) int32, (B,))."""
  p = importance_probs(loss_history)
  t = jax.random.categorical(key, jnp.log(p), shape=(batch_size,)).astype(jnp.int32)
  return t, 1.0 / (p.shape[0] * p[t])
