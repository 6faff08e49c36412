"""`--mode=sample` with `config.sample.mode` = inpaint | colorize | edit: the editing chains of
an unconditional model (`ddpm_jax.editing_chains`) on images from a folder or a dataset split
(`ddpm_jax.editing_inputs`).

Writes, under `workdir/samples/`, a PNG grid of (input | condition | result) triplets, where the
condition is the masked input (inpaint; the pixels to generate in mid grey), the grey image the
model sees (colorize) or the input noised to t0 (edit), and an `.npz` with the results under
`arr_0` (uint8, N x H x W x C) and the inputs (and masks) beside them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ddpm_jax import data, editing_chains, editing_inputs, generation, image_files, reverse_chains


def triplet_grid(columns) -> np.ndarray:
  """uint8 (3, N, H, W, C) -> one image: each item's three pictures side by side (1-pixel gap),
  about sqrt(N / 2) items per row, items 6 pixels apart."""
  triplets = np.stack([image_files.make_grid(item, ncols=3, padding=1)[1:-1, 1:-1]
                       for item in np.swapaxes(columns, 0, 1)])
  per_row = max(1, round(math.sqrt(len(triplets) / 2)))
  return image_files.make_grid(triplets, ncols=per_row, padding=6)


def _edit_fn(config, experiment, params):
  """(jitted `(x, mask, key) -> (result, condition)` in [-1, 1], the start index of edit, the
  chain)."""
  s = config.sample
  chain, denoise_fn, kwargs = generation.chain_setup(experiment, params)
  sched = chain.schedule
  # The paper's t0 counts from 1 (0 = the input itself); chain indices from 0.
  start = reverse_chains.chain_index(chain.timesteps, s.t0 - 1) if s.mode == 'edit' else -1
  repaint = dict(jump_length=s.jump_length, resample=s.resample)

  def run(x, mask, key):
    if s.mode == 'inpaint':
      out = editing_chains.inpaint(sched, denoise_fn, x, mask, key, **repaint, **kwargs)
      return out, mask * x  # The generated pixels in mid grey (0 in [-1, 1]).
    if s.mode == 'colorize':
      grey = editing_chains.grey_projector(x)
      return editing_chains.colorize(sched, denoise_fn, grey, key, **repaint, **kwargs), grey
    out = editing_chains.sdedit(sched, denoise_fn, x, start, key, **kwargs)
    return out, (editing_chains.sdedit_start(sched, x, start, key) if start >= 0 else x)

  return jax.jit(run), start, chain


def run(config, experiment, params, key, stem: str, is_main: bool) -> dict:
  """Runs `config.sample.mode` (inpaint | colorize | edit) on `config.sample.num` inputs in
  batches of `config.sample.batch_size` (batch b keyed by fold_in(key, b)); writes the grid
  and the npz on process 0. Returns the paths and a summary figure of the mode."""
  s = config.sample
  size = config.data.image_size
  originals = editing_inputs.load_images(config, s.num)
  n = len(originals)
  masks = (editing_inputs.load_masks(s.mask, size, n, s.seed) if s.mode == 'inpaint'
           else np.ones((n, size, size, 1), np.float32))
  fn, start, chain = _edit_fn(config, experiment, params)
  x = data.to_float(originals)
  bs = min(s.batch_size, n)
  # The last batch is padded to the same shape: one compilation.
  xs, ms = (np.pad(a, [(0, -n % bs)] + [(0, 0)] * 3, mode='edge') for a in (x, masks))
  outs = [jax.device_get(fn(jnp.asarray(xs[i:i + bs]), jnp.asarray(ms[i:i + bs]),
                            jax.random.fold_in(key, i // bs)))
          for i in tqdm(range(0, len(xs), bs), desc=s.mode, unit='batch',
                        disable=jax.process_index() != 0)]
  results, conds = (image_files.to_uint8(np.concatenate(a)[:n]) for a in zip(*outs))
  if not is_main:
    return {}
  extra = dict(inputs=originals)
  summary = {}
  if s.mode == 'inpaint':
    extra['masks'] = masks.astype(np.uint8)
    keep = np.broadcast_to(masks > 0, results.shape)
    summary['known_max_abs_diff'] = int(np.abs(results.astype(int) - originals)[keep].max(
        initial=0))
    what = (f'mask {s.mask}, {100 * (1 - masks.mean()):.0f}% of the pixels generated; known '
            f'pixels changed by at most {summary["known_max_abs_diff"]}/255')
  elif s.mode == 'colorize':
    grey_in = originals.astype(np.float64).mean(-1)
    summary['grey_max_abs_diff'] = float(np.abs(results.mean(-1) - grey_in).max())
    what = (f'grey level (channel mean) kept to within {summary["grey_max_abs_diff"]:.2f}/255 '
            '(uint8 rounding)')
  else:
    extra['t0'] = np.int64(s.t0)
    summary['mse_to_input'] = float(np.mean((data.to_float(results) - x) ** 2))
    kept_t = int(chain.timesteps[start]) + 1 if start >= 0 else 0
    what = (f't0 = {s.t0} (chain starts at t = {kept_t}); mean squared change '
            f'{summary["mse_to_input"]:.3f} on [-1, 1] images')
  if s.resample > 1 and s.mode != 'edit':
    what += f'; RePaint resampling {s.resample}x every {s.jump_length} steps'
  grid = triplet_grid(np.stack([originals, conds, results]))
  paths = {'png': image_files.save_png(stem + '.png', grid),
           'npz': image_files.save_npz(stem + '.npz', results, **extra), **summary}
  cond_name = {'inpaint': 'masked input', 'colorize': 'grey input', 'edit': 'input noised to t0'}
  chain_text = generation.describe(config, experiment.schedule.num_timesteps)
  print(f'{s.mode.capitalize()} of {n} images ({chain_text}; {what}): {paths["png"]} (input | '
        f'{cond_name[s.mode]} | result), {paths["npz"]}')
  return paths
