"""Progressive generation and interpolation (Ho et al. 2020, Sec. 4.3, Figures 6 and 8).

* Progressive generation (Fig. 6): the chain's x_t and its prediction of x_0 at a few steps,
  written as a grid (one row per sample, one column per saved step, x_T on the left) and as an
  animated GIF (PIL; each frame = the x_t row above the predicted-x_0 row).
* Interpolation (Fig. 8): two images are encoded with the stochastic encoder q(x_t | x_0)
  (eq. 4), their latents mixed as (1 - lambda) x_t + lambda x'_t, and each mixture decoded by
  the reverse chain from step t, with the same chain noise for every lambda.

The arrays come from `ddpm_jax.samplers` (`save_at`, `start_index`); this module only picks
steps and writes files.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ddpm_jax import diffusion, images, samplers
from ddpm_jax.schedules import Schedule


def progressive_steps(chain_length: int, frames: int) -> list[int]:
  """`frames` chain indices evenly spaced from the first step (n - 1) to the last (0),
  in the order the chain visits them."""
  frames = max(1, min(int(frames), chain_length))
  return [int(i) for i in
          np.unique(np.round(np.linspace(0, chain_length - 1, frames)).astype(int))[::-1]]


def trajectory_grid(traj_uint8: np.ndarray, final_uint8: np.ndarray | None = None) -> np.ndarray:
  """(K, B, H, W, C) uint8 frames (+ optional final (B, H, W, C)) -> a grid with one row per
  sample and one column per frame."""
  traj = np.asarray(traj_uint8)
  if final_uint8 is not None:
    traj = np.concatenate([traj, np.asarray(final_uint8)[None]], axis=0)
  k, b = traj.shape[:2]
  return images.make_grid(traj.transpose(1, 0, 2, 3, 4).reshape((k * b,) + traj.shape[2:]),
                          ncols=k)


def save_gif(path: str, frames_uint8, duration_ms: int = 300, scale: int = 1) -> str:
  """Animated GIF of uint8 (H, W, 1 or 3) frames (looping; the last frame held 4x longer)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  pics = []
  for f in frames_uint8:
    f = np.asarray(f)
    if scale > 1:
      f = np.repeat(np.repeat(f, scale, axis=0), scale, axis=1)
    pics.append(Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f))
  durations = [duration_ms] * (len(pics) - 1) + [4 * duration_ms]
  tmp = path + '.tmp'
  pics[0].save(tmp, format='GIF', save_all=True, append_images=pics[1:], duration=durations,
               loop=0)
  os.replace(tmp, path)
  return path


def write_progressive(stem: str, traj: dict, final) -> dict:
  """Grids `stem_xt.png`, `stem_pred_x0.png` (columns = saved steps, then the final sample)
  and `stem.gif` from a sampler trajectory {'xt', 'pred_x0'} of (K, B, H, W, C) in [-1, 1]."""
  xt, x0, fin = (images.to_uint8(traj['xt']), images.to_uint8(traj['pred_x0']),
                 images.to_uint8(final))
  paths = {'xt_png': images.save_png(stem + '_xt.png', trajectory_grid(xt, fin)),
           'pred_x0_png': images.save_png(stem + '_pred_x0.png', trajectory_grid(x0, fin))}
  b = xt.shape[1]
  frames = [images.make_grid(np.concatenate([a, p]), ncols=b) for a, p in zip(xt, x0)]
  frames.append(images.make_grid(np.concatenate([fin, fin]), ncols=b))
  paths['gif'] = save_gif(stem + '.gif', frames, scale=2 if xt.shape[2] <= 64 else 1)
  return paths


def interpolation_start(chain_timesteps, t: int) -> int:
  """The chain index whose original timestep is the largest kept one <= t."""
  kept = np.asarray(chain_timesteps)
  return int(np.searchsorted(kept, t, side='right') - 1)


def interpolate(chain_schedule: Schedule, denoise_fn, x_a, x_b, lambdas, start_index: int, key,
                *, sampler: str = 'ancestral', **sampler_kwargs):
  """Fig. 8: decode (1 - lambda) x_t(x_a) + lambda x_t(x_b) for each lambda. Jittable.

  x_a, x_b: (B, H, W, C) in [-1, 1]; `start_index` indexes `chain_schedule` (its alphabar is
  that of the original timestep); the two encodings use independent noise, and every lambda
  is decoded with the same chain noise (a vmap over lambda with one key).
  Returns (L, B, H, W, C).
  """
  k_a, k_b, k_chain = jax.random.split(key, 3)
  t = jnp.full((x_a.shape[0],), start_index, jnp.int32)
  xt_a = diffusion.q_sample(chain_schedule, x_a, t, jax.random.normal(k_a, x_a.shape))
  xt_b = diffusion.q_sample(chain_schedule, x_b, t, jax.random.normal(k_b, x_b.shape))
  lambdas = jnp.asarray(lambdas, jnp.float32).reshape((-1,) + (1,) * x_a.ndim)
  latents = (1.0 - lambdas) * xt_a + lambdas * xt_b

  def decode(x):
    return samplers.sample(sampler, chain_schedule, denoise_fn, x.shape, k_chain, x_T=x,
                           start_index=start_index, **sampler_kwargs)

  return jax.vmap(decode)(latents)
