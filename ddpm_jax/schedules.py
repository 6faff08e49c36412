"""Noise schedules of the forward process q(x_t | x_{t-1}) and every array derived from them.

`make_schedule` computes the betas and all the per-timestep coefficients the diffusion maths
needs once, in float64, and stores them as float32 arrays in a frozen pytree. Everything in
`ddpm_jax.diffusion` and `ddpm_jax.reverse_chains` only indexes these arrays.

Names follow Ho et al. (2020), notation: alpha_t = 1 - beta_t, alphabar_t = prod_{s<=t} alpha_s.
"""

from __future__ import annotations

import inspect
from typing import Callable

import flax.struct
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Schedule:
  """Precomputed arrays of a T-step schedule, each of shape (T,), float32.

  Index t = 0 .. T-1 stands for the paper's timestep t + 1 (the paper counts from 1).
  """

  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  log_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


# ---------------------------------------------------------------------------------------------
# Beta schedules (float64).


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
  """The paper's schedule (Sec. 4): betas linear from 1e-4 to 0.02 over T = 1000 steps."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def quadratic_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
  """Betas whose square roots are linear in t (the paper's code, 'quad')."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999):
  """Nichol & Dhariwal (2021), eq. 17: alphabar(t) = cos^2(pi/2 (t/T + s) / (1 + s)).

  beta_t = 1 - alphabar(t) / alphabar(t - 1), clipped to `max_beta` near t = T.
  """
  u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  alphabar = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  return np.minimum(1 - alphabar[1:] / alphabar[:-1], max_beta)


def const_betas(num_timesteps: int, beta_end: float = 0.02):
  """Every beta equal to `beta_end` (the paper's code, 'const')."""
  return np.full((num_timesteps,), beta_end, dtype=np.float64)


_BETA_SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
    'linear': linear_betas,
    'quadratic': quadratic_betas,
    'cosine': cosine_betas,
    'const': const_betas,
}
SCHEDULE_NAMES = tuple(_BETA_SCHEDULES)


def make_betas(name: str, num_timesteps: int, **kwargs) -> np.ndarray:
  """Betas of the named schedule, float64, shape (num_timesteps,). Keywords the schedule does
  not take are ignored, so that every schedule can be given beta_start and beta_end."""
  if name not in _BETA_SCHEDULES:
    raise ValueError(
        f'Unknown noise schedule {name!r} (config.diffusion.schedule); '
        f'valid schedules: {", ".join(SCHEDULE_NAMES)}.')
  if int(num_timesteps) < 1:
    raise ValueError(f'num_timesteps must be >= 1, got {num_timesteps}.')
  fn = _BETA_SCHEDULES[name]
  kwargs = {k: v for k, v in kwargs.items() if k in inspect.signature(fn).parameters}
  betas = fn(int(num_timesteps), **kwargs)
  if not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f'Schedule {name!r} with {kwargs} gives betas outside (0, 1).')
  return betas


# ---------------------------------------------------------------------------------------------
# Derived arrays.


def schedule_from_betas(betas: np.ndarray) -> Schedule:
  """All coefficients of the forward process and of the posterior q(x_{t-1} | x_t, x_0).

  Computed in float64, stored as float32.
    alphabar_t                = prod_{s<=t} (1 - beta_s)
    posterior variance (eq. 7)  betatilde_t = (1 - alphabar_{t-1}) / (1 - alphabar_t) beta_t
    posterior mean (eq. 7)      mutilde_t = coef1_t x_0 + coef2_t x_t with
                                coef1_t = sqrt(alphabar_{t-1}) beta_t / (1 - alphabar_t),
                                coef2_t = sqrt(alpha_t) (1 - alphabar_{t-1}) / (1 - alphabar_t).
  The log posterior variance is clipped at t = 1 (index 0), where betatilde is 0, by
  repeating the value of t = 2, as in the paper's code.
  """
  betas = np.asarray(betas, dtype=np.float64)
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  if len(betas) > 1:
    clipped = np.append(posterior_variance[1], posterior_variance[1:])
  else:
    clipped = betas.copy()
  arrays = dict(
      betas=betas,
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=np.log(clipped),
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
  )
  return Schedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()})


def make_schedule(name: str = 'linear', num_timesteps: int = 1000, **kwargs) -> Schedule:
  """The schedule `name` (linear | quadratic | cosine | const) with all derived arrays.

  kwargs: `beta_start`, `beta_end` (linear, quadratic; const uses beta_end), `s`, `max_beta`
  (cosine); those a schedule does not take are ignored.
  """
  return schedule_from_betas(make_betas(name, num_timesteps, **kwargs))


def config_betas(diffusion_config) -> np.ndarray:
  """The float64 betas of `config.diffusion` (schedule, num_timesteps, beta_start, beta_end)."""
  f = diffusion_config
  return make_betas(f.schedule, f.num_timesteps, beta_start=f.beta_start, beta_end=f.beta_end)


def schedule_from_config(diffusion_config) -> Schedule:
  """The `Schedule` of `config.diffusion`."""
  return schedule_from_betas(config_betas(diffusion_config))
