"""Negative log-likelihood bound in bits/dim: the full variational bound of eq. 5.

  L = L_T + sum_{t>1} L_{t-1} + L_0
    = KL(q(x_T|x_0) || N(0, I))                         prior term (`diffusion.prior_bpd`)
    + sum_{t=2..T} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))   (`diffusion.vlb_terms`, t > 1)
    - log p(x_0|x_1)                                    discretised decoder, eq. 13 (t = 1)

All T terms of a batch are computed on the device in one `lax.scan` over t (a fresh
x_t ~ q(x_t|x_0) per term, as in the paper's `calc_bpd_loop`), never a host loop.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.schedules import Schedule


def bpd_terms(schedule: Schedule, denoise_fn: Callable, x0, key, *, mean_type: str = 'eps',
              var_type: str = 'fixedlarge', clip_denoised: bool = True) -> dict:
  """Every term of eq. 5 for a batch x0 in [-1, 1] (data on the 256 levels), in bits/dim.

  Returns {'total': (B,), 'prior': (B,), 'terms': (B, T) with terms[:, 0] the decoder L_0 and
  terms[:, t] the KL term L_t for t >= 1 (index t is the paper's t + 1)}.
  """
  batch = x0.shape[0]

  def term(carry, t):
    tt = jnp.full((batch,), t, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    xt = diffusion.q_sample(schedule, x0, tt, noise)
    out = diffusion.vlb_terms(schedule, denoise_fn(xt, tt), x0, xt, tt, mean_type=mean_type,
                              var_type=var_type, clip=clip_denoised)
    return carry, out.vlb

  _, terms = jax.lax.scan(term, None, jnp.arange(schedule.num_timesteps, dtype=jnp.int32))
  terms = terms.T  # (B, T)
  prior = diffusion.prior_bpd(schedule, x0)
  return {'total': jnp.sum(terms, axis=1) + prior, 'prior': prior, 'terms': terms}


def summarize(results: dict) -> dict:
  """Batch means of `bpd_terms`' output as floats: total, prior, decoder (L_0), the sum of the
  KL terms, and the per-term means (T,) as a NumPy array under 'terms'."""
  terms = np.asarray(results['terms'], np.float64)
  return {
      'bpd': float(np.mean(results['total'])),
      'prior_bpd': float(np.mean(results['prior'])),
      'decoder_bpd': float(np.mean(terms[:, 0])),
      'kl_terms_bpd': float(np.mean(np.sum(terms[:, 1:], axis=1))),
      'terms': terms.mean(axis=0),
  }
