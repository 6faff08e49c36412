"""The reverse chains: each runs whole inside one `jax.lax.scan`, never a host loop.

A `denoise_fn(x_t, t) -> model_output` closes over the network and its parameters (and, for a
class-conditional model, the labels and the guidance scale); the chains only know the
`Schedule` and the maths of `ddpm_jax.diffusion`.

Chains over any increasing subsequence k_0 < ... < k_{n-1} of the T timesteps (`sample`):
* ancestral: Algorithm 2 of Ho et al. (2020);
* ddim: DDIM (Song, Meng & Ermon 2021, eq. 12) with stochasticity `eta`; `ddim_encode` runs
  the eta = 0 update backwards (DDIM inversion, image -> x_T);
* `interpolate`: two images mixed in latent space and decoded (Ho et al. Fig. 8).
A subsequence is a *respaced* schedule (`respace`, Nichol & Dhariwal 2021, Sec. 4): a chain of
n steps whose step i has beta'_i = 1 - alphabar_{k_i} / alphabar_{k_{i-1}} (alphabar_{k_{-1}}
= 1), so that its alphabar'_i = alphabar_{k_i} exactly. The chain indexes the respaced
schedule by i and calls the network with the original timestep k_i. Every "previous step"
quantity (alphabar_prev, the posterior) comes from the respaced schedule, i.e. from the previous
*kept* step -- never from alphabar[k_i - 1].

Parameterisations in a respaced chain: eps, x0 and v only involve alphabar at the current step,
which respacing keeps, so they carry over unchanged. A `mu` network predicts the one-step
posterior mean of the *original* schedule; wrap it with `as_x0_denoiser(base_schedule, ...)`
first (the chains refuse `mu` with `timesteps`). A `learned` log-variance is that of one
original step; respaced chains should use `learned_range`, whose endpoints come from the
respaced schedule (as in Nichol & Dhariwal).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, schedules
from ddpm_jax.schedules import Schedule

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
SAMPLERS = ('ancestral', 'ddim')


# ---------------------------------------------------------------------------------------------
# Respacing.


class Respaced(NamedTuple):
  """A chain over kept timesteps: its own `Schedule` (length n) and the original timestep of
  each of its steps, `timesteps[i] = k_i` (int32, (n,)), which is what the network sees."""
  schedule: Schedule
  timesteps: jnp.ndarray


def space_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` timesteps evenly spaced over [0, T-1], always keeping 0 and T - 1 (so the chain
  starts from pure noise and ends at the data). steps = T (or 0) keeps every step; steps = 1
  keeps only T - 1."""
  steps = int(steps) or int(num_timesteps)
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f'Cannot take {steps} sampling steps out of {num_timesteps} timesteps '
                     f'(config.sample.steps must be in [1, config.diffusion.num_timesteps]).')
  if steps == 1:
    return np.array([num_timesteps - 1], np.int64)
  kept = np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int64)
  assert len(np.unique(kept)) == steps
  return kept


def respaced_betas(base_betas, timesteps) -> np.ndarray:
  """beta'_i = 1 - alphabar_{k_i} / alphabar_{k_{i-1}} in float64 (N&D Sec. 4), computed as
  1 - prod_{k_{i-1} < j <= k_i} (1 - beta_j) so that a run of one kept step reproduces
  1 - beta_j, the original alpha_j, exactly (respacing with every step is the identity)."""
  betas = np.asarray(base_betas, np.float64)
  kept = np.asarray(timesteps, np.int64)
  if kept.ndim != 1 or not len(kept) or np.any(np.diff(kept) <= 0) or kept[0] < 0 or (
      kept[-1] >= len(betas)):
    raise ValueError(f'Kept timesteps must be strictly increasing in [0, {len(betas)}), got '
                     f'{kept}.')
  alphas = 1.0 - betas
  starts = np.concatenate([[0], kept[:-1] + 1])
  new_alphas = np.array([np.prod(alphas[s:k + 1]) for s, k in zip(starts, kept)])
  return 1.0 - new_alphas


def respace(base_betas, timesteps) -> Respaced:
  """The respaced chain over `timesteps` (kept original indices, increasing) of the base
  schedule's float64 betas (`schedules.make_betas`)."""
  kept = np.asarray(timesteps, np.int64)
  return Respaced(schedules.schedule_from_betas(respaced_betas(base_betas, kept)),
                  jnp.asarray(kept, jnp.int32))


def as_x0_denoiser(base_schedule: Schedule, denoise_fn: DenoiseFn, mean_type: str,
                   var_type: str) -> DenoiseFn:
  """A denoiser that returns the x_0 prediction (plus any variance channels) of a network of
  parameterisation `mean_type`, converted with the *base* schedule at the network's own
  timestep; use it with `mean_type='x0'` in a respaced chain."""

  def x0_fn(x, t):
    mean_out, var_out = diffusion.split_model_output(denoise_fn(x, t).astype(jnp.float32),
                                                     var_type)
    x0 = diffusion.model_output_to_x0(base_schedule, mean_out, x, t, mean_type)
    return x0 if var_out is None else jnp.concatenate([x0, var_out], axis=-1)

  return x0_fn


# ---------------------------------------------------------------------------------------------
# One step of each chain (pure).


def p_sample(schedule: Schedule, model_output, xt, t, noise, *, var_type: str, mean_type: str,
             clip_denoised: bool):
  """One step of Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with z = 0 at t = 1.

  `t` is a (B,) int array indexing `schedule` (index 0 is the paper's t = 1); `noise` has the
  shape of x_t. Returns (x_{t-1}, predicted x_0)."""
  out = diffusion.p_mean_variance(schedule, model_output, xt, t, var_type=var_type,
                                  clip=clip_denoised, mean_type=mean_type)
  nonzero = (t != 0).astype(xt.dtype).reshape((-1,) + (1,) * (xt.ndim - 1))
  return out.mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise, out.pred_x0


def predict_x0_eps(schedule: Schedule, model_output, xt, t, *, mean_type: str, var_type: str,
                   clip: bool):
  """(x_0, eps) implied by the network's output at (x_t, t); with `clip` x_0 is clipped to
  [-1, 1] first and eps recomputed from it (eq. 4), so the two stay consistent with x_t."""
  mean_out, _ = diffusion.split_model_output(model_output.astype(jnp.float32), var_type)
  x0 = diffusion.model_output_to_x0(schedule, mean_out, xt, t, mean_type)
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  if mean_type == 'eps' and not clip:
    return x0, mean_out
  return x0, diffusion.predict_eps_from_x0(schedule, xt, t, x0)


def ddim_step(schedule: Schedule, pred_x0, eps, t, eta, noise):
  """Song et al. (2021), eq. 12 with sigma of eq. 16, from x_t (index t) to the previous kept
  step (index t - 1 of `schedule`, alphabar_prev = 1 after the last step):

    x_prev = sqrt(alphabar_prev) x0 + sqrt(1 - alphabar_prev - sigma^2) eps + sigma z,
    sigma  = eta sqrt((1 - alphabar_prev) / (1 - alphabar_t)) sqrt(1 - alphabar_t / alphabar_prev).

  eta = 0: deterministic (DDIM); eta = 1: the ancestral step with sigma^2 = betatilde_t.
  """
  ndim = pred_x0.ndim
  abar = diffusion.extract(schedule.alphas_cumprod, t, ndim)
  abar_prev = diffusion.extract(schedule.alphas_cumprod_prev, t, ndim)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - jnp.square(sigma), 0.0))
  return jnp.sqrt(abar_prev) * pred_x0 + direction * eps + sigma * noise


def ddim_reverse_step(schedule: Schedule, pred_x0, eps, t):
  """The eta = 0 update of eq. 12 run forwards in time (DDIM inversion; Song et al. Sec. 4.3,
  eq. 13 discretised): x_next = sqrt(alphabar_{t+1}) x0 + sqrt(1 - alphabar_{t+1}) eps, with
  (x0, eps) predicted at the current point x_t. `t + 1` indexes `schedule` (the next kept step)."""
  ndim = pred_x0.ndim
  abar_next = diffusion.extract(schedule.alphas_cumprod, t + 1, ndim)
  return jnp.sqrt(abar_next) * pred_x0 + jnp.sqrt(1.0 - abar_next) * eps


def _timesteps(timesteps, i, batch: int):
  """(t, model_t), (B,) int32: chain index `i`, and the timestep the network sees there."""
  t = jnp.full((batch,), i, jnp.int32)
  return t, t if timesteps is None else jnp.full((batch,), timesteps[i], jnp.int32)


def reverse_step(sampler: str, schedule: Schedule, denoise_fn: DenoiseFn, x, i, noise, *,
                 eta: float = 0.0, var_type: str = 'fixedlarge', mean_type: str = 'eps',
                 clip_denoised: bool = True, timesteps=None):
  """One step of `sampler` from chain index `i` (a scalar) to i - 1: `p_sample` (ancestral)
  or `ddim_step` (ddim, stochasticity `eta`; a learned variance output is ignored). The
  network sees `timesteps[i]` in a respaced chain. Returns (x_{i-1}, predicted x_0)."""
  t, model_t = _timesteps(timesteps, i, x.shape[0])
  model_output = denoise_fn(x, model_t)
  if sampler == 'ancestral':
    return p_sample(schedule, model_output, x, t, noise, var_type=var_type, mean_type=mean_type,
                    clip_denoised=clip_denoised)
  x0, eps = predict_x0_eps(schedule, model_output, x, t, mean_type=mean_type, var_type=var_type,
                           clip=clip_denoised)
  return ddim_step(schedule, x0, eps, t, eta, noise), x0


def check_chain(sampler: str, mean_type: str, timesteps) -> None:
  """Refuses an unknown sampler, and a `mu` network in a respaced chain (see the module
  docstring: wrap it with `as_x0_denoiser` first)."""
  if sampler not in SAMPLERS:
    raise ValueError(f'Unknown sampler {sampler!r}; valid: {", ".join(SAMPLERS)}.')
  if mean_type == 'mu' and timesteps is not None:
    raise ValueError("mean_type='mu' predicts the posterior mean of one original step; in a "
                     "respaced chain wrap the denoiser with reverse_chains.as_x0_denoiser and "
                     "pass mean_type='x0'.")


# ---------------------------------------------------------------------------------------------
# Chains.


def _scan_chain(step_fn, x, indices, save_at: Optional[Sequence[int]], n: int):
  """`lax.scan` of `step_fn(x, i) -> (x_next, pred_x0)` over the chain indices `indices`.

  With `save_at` (chain indices, static), also returns {'xt', 'pred_x0'} of shape
  (len(save_at), B, ...): the input x_i and the predicted x_0 at each saved step, written into
  a fixed buffer (one dynamic slice update per step, never the whole trajectory).
  """
  if not save_at:
    x, _ = jax.lax.scan(lambda x, i: (step_fn(x, i)[0], None), x, indices)
    return x, None
  save_at = [int(s) for s in save_at]
  slot_of = np.full((n,), len(save_at), np.int32)  # Last slot: a dummy for unsaved steps.
  slot_of[np.asarray(save_at)] = np.arange(len(save_at), dtype=np.int32)
  slot_of = jnp.asarray(slot_of)
  buf = jnp.zeros((len(save_at) + 1,) + x.shape, x.dtype)

  def body(carry, i):
    x, buf_x, buf_x0 = carry
    x_next, x0 = step_fn(x, i)
    slot = slot_of[i]
    buf_x = jax.lax.dynamic_update_index_in_dim(buf_x, x, slot, 0)
    buf_x0 = jax.lax.dynamic_update_index_in_dim(buf_x0, x0.astype(x.dtype), slot, 0)
    return (x_next, buf_x, buf_x0), None

  (x, buf_x, buf_x0), _ = jax.lax.scan(body, (x, buf, buf), indices)
  return x, {'xt': buf_x[:-1], 'pred_x0': buf_x0[:-1]}


def sample(sampler: str, schedule: Schedule, denoise_fn: DenoiseFn, shape, key, *,
           eta: float = 0.0, var_type: str = 'fixedlarge', mean_type: str = 'eps',
           clip_denoised: bool = True, x_T=None, timesteps=None,
           start_index: Optional[int] = None, save_at=None):
  """x_T ~ N(0, I), then `reverse_step` of `sampler` (config.sample.sampler) down to x_0; DDIM
  with eta = 0 is deterministic given x_T.

  `schedule` is the base schedule, or with `timesteps` (`respace(...).timesteps`) the respaced
  one. `start_index` starts from `x_T` at that chain index instead of the last (used to
  denoise a partially noised image). The step-i noise is drawn from `fold_in(key, i)`, so a
  chain is a pure function of `key`. Call this under `jax.jit`; the loop is a `lax.scan` over
  i = n-1 .. 0. Returns x_0, or (x_0, trajectory) when `save_at` lists chain indices.
  """
  check_chain(sampler, mean_type, timesteps)
  key_init, key_chain = jax.random.split(key)
  x = jax.random.normal(key_init, shape, jnp.float32) if x_T is None else x_T
  n = schedule.num_timesteps

  def step(x, i):
    noise = jax.random.normal(jax.random.fold_in(key_chain, i), shape, jnp.float32)
    return reverse_step(sampler, schedule, denoise_fn, x, i, noise, eta=eta, var_type=var_type,
                        mean_type=mean_type, clip_denoised=clip_denoised, timesteps=timesteps)

  start = n - 1 if start_index is None else int(start_index)
  x, traj = _scan_chain(step, x, jnp.arange(start, -1, -1, dtype=jnp.int32), save_at, n)
  return x if save_at is None else (x, traj)


def ddim_encode(schedule: Schedule, denoise_fn: DenoiseFn, x0, *, var_type: str = 'fixedlarge',
                mean_type: str = 'eps', clip_denoised: bool = False, timesteps=None):
  """DDIM inversion: the image `x0` is taken as the chain's state at index 0 and carried by
  `ddim_reverse_step` up to the chain's x_T (index n - 1), where
  `sample('ddim', ..., eta=0, x_T=result)` decodes it back. Clipping is off by default: it
  would make the map non-invertible."""
  check_chain('ddim', mean_type, timesteps)

  def step(x, i):
    t, model_t = _timesteps(timesteps, i, x.shape[0])
    px0, eps = predict_x0_eps(schedule, denoise_fn(x, model_t), x, t, mean_type=mean_type,
                              var_type=var_type, clip=clip_denoised)
    return ddim_reverse_step(schedule, px0, eps, t), None

  indices = jnp.arange(schedule.num_timesteps - 1, dtype=jnp.int32)
  x, _ = jax.lax.scan(step, x0.astype(jnp.float32), indices)
  return x


def chain_index(timesteps, t: int) -> int:
  """The chain index of the largest kept timestep <= `t` (0-based), -1 when there is none:
  where a chain started from an image noised to the paper's step t + 1 begins."""
  return int(np.searchsorted(np.asarray(timesteps), int(t), side='right')) - 1


def interpolate(chain_schedule: Schedule, denoise_fn: DenoiseFn, x_a, x_b, lambdas,
                start_index: int, key, *, sampler: str = 'ancestral', **sampler_kwargs):
  """Interpolation in latent space (Ho et al. 2020, Sec. 4.3, Fig. 8): x_a and x_b are encoded
  with the stochastic encoder q(x_t | x_0) (eq. 4, independent noise), mixed as
  (1 - lambda) x_t + lambda x'_t for each lambda, and each mixture is decoded by `sample` from
  chain index `start_index` with the same chain noise (a vmap over lambda with one key).
  Jittable. x_a, x_b: (B, H, W, C) in [-1, 1]; returns (L, B, H, W, C).
  """
  k_a, k_b, k_chain = jax.random.split(key, 3)
  t = jnp.full((x_a.shape[0],), start_index, jnp.int32)
  xt_a = diffusion.q_sample(chain_schedule, x_a, t, jax.random.normal(k_a, x_a.shape))
  xt_b = diffusion.q_sample(chain_schedule, x_b, t, jax.random.normal(k_b, x_b.shape))
  lambdas = jnp.asarray(lambdas, jnp.float32).reshape((-1,) + (1,) * x_a.ndim)
  latents = (1.0 - lambdas) * xt_a + lambdas * xt_b

  def decode(x):
    return sample(sampler, chain_schedule, denoise_fn, x.shape, k_chain, x_T=x,
                  start_index=start_index, **sampler_kwargs)

  return jax.vmap(decode)(latents)
