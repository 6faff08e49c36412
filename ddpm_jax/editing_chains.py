"""The editing chains of an unconditional DDPM: inpainting, colorization and image-to-image
editing (SDEdit), each one `jax.lax.scan` over the steps of `ddpm_jax.reverse_chains` (so every
mean type, variance type, respacing and both samplers work).

Inpainting and colorization condition the reverse chain on a known *linear part* of the image,
P y, where P is an orthogonal projector (P = P^T = P^2). After every reverse step to chain
index i - 1, the known part of the state is replaced by the known part of the known image
noised to that step with q(x_{i-1} | x_0) (eq. 4):

    x_{i-1} <- (I - P) x_{i-1} + P q_sample(y, i - 1),      and P y itself after the last step

(`replace_known`; score_sde's `controllable_generation.py`; RePaint, Lugmayr et al. 2022,
Algorithm 1). So the output's known part is exactly P y.
* Inpainting: P = diag(mask), mask 1 on the known pixels and 0 on those to generate.
* Colorization: P projects each pixel's (r, g, b) onto (1, 1, 1) / sqrt(3). score_sde
  "decouples" the colours with an orthogonal matrix M whose first column is (1, 1, 1) / sqrt(3),
  replaces that channel with the grey image's and "couples" back with M^T; because M is
  orthogonal, that is exactly this projector, x - mean_c(x) + mean_c(y) for each pixel, whatever
  M's other two columns are. The kept channel is the uniform grey level (r + g + b) / 3.

Replacement is not the exact conditional p(x_0 | P x_0 = P y) when the known and unknown parts
are correlated: the unknown part sees the known one only through its freshly noised copy at
each step. RePaint's resampling (`resample` > 1) harmonises them: after every `jump_length`
reverse steps the chain jumps back up `jump_length` steps with q(x_{i+j} | x_i) (`q_jump`) and
descends again, `resample` times in all (`repaint_path`); the tests measure both against the
closed-form conditional of Gaussian data.

Image-to-image editing (SDEdit, Meng et al. 2022): the input is noised to step t0 with
q_sample (eq. 4) and the reverse chain (ancestral or DDIM) runs from there (`sdedit`): t0 = 0
returns the input, t0 = T is unconditional sampling.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, reverse_chains
from ddpm_jax.schedules import Schedule

Projector = Callable[[jnp.ndarray], jnp.ndarray]


# ---------------------------------------------------------------------------------------------
# Projectors onto the known part, and the forward process between chain indices.


def grey_projector(x):
  """P onto (1, 1, 1) / sqrt(3) at each pixel: every channel set to the channel mean. This is
  score_sde's decouple -> keep channel 0 -> couple, for any orthogonal M with that first
  column."""
  return jnp.broadcast_to(jnp.mean(x, axis=-1, keepdims=True), x.shape)


def replace_known(project: Projector, x, y_t):
  """(I - P) x + P y_t: the state `x` with its known part taken from `y_t`."""
  return x - project(x) + project(y_t)


def q_jump(schedule: Schedule, x, src, dst, noise):
  """A sample of q(x_dst | x_src) for chain indices src < dst, the forward process (eq. 2)
  over several steps: N(sqrt(alphabar_dst / alphabar_src) x, (1 - alphabar_dst / alphabar_src) I),
  index -1 being the data (alphabar 1): from src = -1, q_sample (eq. 4) of the clean `x`."""
  alphas_cumprod = jnp.append(schedule.alphas_cumprod, 1.0)  # Index -1 reads the data's 1.
  ratio = alphas_cumprod[dst] / alphas_cumprod[src]
  return jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * noise


def repaint_path(num_steps: int, jump_length: int = 1, resample: int = 1) -> np.ndarray:
  """The chain indices a RePaint chain visits, from n - 1 (x_T) down to -1 (the data).

  Descending one index is a reverse step; going up is a forward jump. On arriving at an index
  s = 0, j, 2j, ... below n - j (j = `jump_length`), the chain jumps back up to s + j and
  descends again, `resample - 1` times (Lugmayr et al. 2022, Sec. 4.2). resample = 1 is the
  plain chain n - 1, ..., 0, -1.
  """
  n, j, r = int(num_steps), int(jump_length), int(resample)
  if n < 1 or j < 1 or r < 1:
    raise ValueError(f'repaint_path needs num_steps, jump_length, resample >= 1, got '
                     f'{n}, {j}, {r}.')
  left = {s: r - 1 for s in range(0, n - j, j)}
  s, path = n - 1, [n - 1]
  while s >= 0:
    s -= 1
    path.append(s)
    if left.get(s, 0) > 0:
      left[s] -= 1
      s += j
      path.append(s)
  return np.asarray(path, np.int32)


# ---------------------------------------------------------------------------------------------
# Chains.


def replacement_sample(schedule: Schedule, denoise_fn, known, project: Projector, key, *,
                       sampler: str = 'ancestral', jump_length: int = 1, resample: int = 1,
                       **step_kwargs):
  """The reverse chain of `schedule` with the known part P `known` imposed after every step
  (module docstring), along `repaint_path(n, jump_length, resample)`. Jittable.

  known: (B, H, W, C) clean images in [-1, 1] (only P known matters). The chain starts from
  x_T ~ N(0, I) with its known part noised to step n - 1. Element k of the path draws its
  noise from fold_in(key, k). `step_kwargs` go to `reverse_chains.reverse_step` (eta, var_type,
  mean_type, clip_denoised, timesteps). Returns x_0, whose known part is P `known`.
  """
  # `step_kwargs` are optional keyword arguments: absent ones take reverse_step's defaults.
  reverse_chains.check_chain(sampler, step_kwargs.get('mean_type', 'eps'),
                             step_kwargs.get('timesteps'))
  known = jnp.asarray(known, jnp.float32)
  shape = known.shape
  n = schedule.num_timesteps
  path = repaint_path(n, jump_length, resample)
  key_init, key_known, key_chain = jax.random.split(key, 3)
  x = jax.random.normal(key_init, shape, jnp.float32)
  x = replace_known(project, x, q_jump(schedule, known, -1, n - 1,
                                       jax.random.normal(key_known, shape, jnp.float32)))

  def body(x, elem):
    k, src, dst = elem
    noise, noise_known = jax.random.normal(jax.random.fold_in(key_chain, k), (2,) + shape)

    def down(x):  # A reverse step, then the known part noised to `dst`.
      x = reverse_chains.reverse_step(sampler, schedule, denoise_fn, x, src, noise,
                                      **step_kwargs)[0]
      return replace_known(project, x, q_jump(schedule, known, -1, dst, noise_known))

    return jax.lax.cond(dst < src, down, lambda x: q_jump(schedule, x, src, dst, noise), x), None

  elems = (jnp.arange(len(path) - 1, dtype=jnp.int32), jnp.asarray(path[:-1]),
           jnp.asarray(path[1:]))
  x, _ = jax.lax.scan(body, x, elems)
  return x


def inpaint(schedule: Schedule, denoise_fn, image, mask, key, **kwargs):
  """Fills the pixels where `mask` is 0, keeping `image` where it is 1 (exactly).
  image: (B, H, W, C) in [-1, 1]; mask: {0, 1}, broadcasting against it, e.g. (B, H, W, 1).
  `kwargs` as for `replacement_sample` (sampler, jump_length, resample, eta, ...)."""
  mask = jnp.asarray(mask, jnp.float32)  # P = diag(mask).
  return replacement_sample(schedule, denoise_fn, image, lambda x: mask * x, key, **kwargs)


def fit_to_range(x, grey):
  """Colours `x` (B, H, W, 3) with channel mean `grey` (B, H, W, 1), desaturated where needed
  so that every channel lies in [-1, 1]: grey + s (x - grey) with the largest s in [0, 1] that
  fits. The channel mean stays `grey` (clipping each channel would change it)."""
  dev = x - grey
  room = jnp.where(dev > 0, 1.0 - grey, -1.0 - grey)  # Signed distance to the bound hit.
  ratio = jnp.where(dev != 0, room / jnp.where(dev == 0, 1.0, dev), jnp.inf)
  s = jnp.clip(jnp.min(ratio, axis=-1, keepdims=True), 0.0, 1.0)
  return grey + s * dev


def colorize(schedule: Schedule, denoise_fn, grey, key, *, fit_range: bool = True, **kwargs):
  """Colours of a 3-channel model for the grey images `grey` ((B, H, W, 1), or RGB, of which
  only the channel mean is used: score_sde's grey level, not the luma weights), keeping that
  channel mean exactly; with `fit_range` the result is brought into [-1, 1] by `fit_to_range`.
  `kwargs` as for `replacement_sample`."""
  g = jnp.mean(jnp.asarray(grey, jnp.float32), axis=-1, keepdims=True)
  known = jnp.broadcast_to(g, g.shape[:-1] + (3,))
  x = replacement_sample(schedule, denoise_fn, known, grey_projector, key, **kwargs)
  return fit_to_range(x, jnp.clip(g, -1.0, 1.0)) if fit_range else x


def sdedit_start(schedule: Schedule, image, start: int, key):
  """The state `sdedit(..., key)` starts its chain from: q_sample(image, start) (eq. 4) with
  the noise of the first half of split(key)."""
  t = jnp.full((image.shape[0],), start, jnp.int32)
  noise = jax.random.normal(jax.random.split(key)[0], image.shape, jnp.float32)
  return diffusion.q_sample(schedule, jnp.asarray(image, jnp.float32), t, noise)


def sdedit(schedule: Schedule, denoise_fn, image, start: int, key, *, sampler: str = 'ancestral',
           **kwargs):
  """SDEdit (Meng et al. 2022): x = q_sample(image, start) (`sdedit_start`), then the reverse
  chain of `reverse_chains.sample(sampler, ...)` from chain index `start` (static;
  `reverse_chains.chain_index(timesteps, t0 - 1)` for the paper's t0) down to x_0.
  start = -1 returns `image`. `kwargs`: eta, var_type, mean_type, clip_denoised, timesteps.
  Jittable."""
  image = jnp.asarray(image, jnp.float32)
  if start < 0:
    return image
  x_t = sdedit_start(schedule, image, start, key)
  return reverse_chains.sample(sampler, schedule, denoise_fn, image.shape,
                               jax.random.split(key)[1], x_T=x_t, start_index=start, **kwargs)
