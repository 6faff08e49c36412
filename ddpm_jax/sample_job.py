"""`--mode=sample`: restore a model and write, under `workdir/samples/`, what
`config.sample.mode` asks for, with the chain of `config.sample` (`ddpm_jax.generation`).

grid:        `config.sample.num` samples as a PNG grid (<= 256) and an `.npz` in the
             improved-diffusion / ADM evaluator's layout (`arr_0` uint8 N x H x W x C, and
             for a class-conditional model `arr_1`, the labels).
progressive: x_t and predicted x_0 at `progressive_frames` steps (Ho et al. 2020, Sec. 4.3,
             Fig. 6) as PNG grids (one row per sample, one column per saved step) and an
             animated GIF (each frame: the x_t row above the predicted-x_0 row).
interpolate: `num` pairs of `data_split` images interpolated at `interp_t` (Fig. 8,
             `reverse_chains.interpolate`), PNG.
reconstruct: `num` `data_split` images DDIM-encoded to x_T (eta = 0) and decoded back, PNG
             (columns: original, x_T / 3, reconstruction) and the mean squared error.
inpaint, colorize, edit: controllable generation (`ddpm_jax.editing_job`).
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import (data, editing_inputs, editing_job, generation, image_files,
                      reverse_chains, sharding)
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment, imported_params


def _restore_params(config, workdir: str, experiment, init_from: str | None = None):
  """(params, step) of the newest checkpoint; with `init_from` and no checkpoint in the
  workdir, (that diffusers model's params, None)."""
  params = imported_params(experiment, workdir, init_from, 'sampling')
  if params is not None:
    return params, None
  # Read-only: a writer's start-up clean-up would delete a running trainer's save in flight.
  checkpointer = Checkpointer(workdir, read_only=True, config=config)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(
        f'No checkpoint in {checkpointer.directory}: train first with --mode=train '
        f'--workdir={workdir}.')
  state, step = checkpointer.restore_latest_valid(experiment.abstract_state())
  checkpointer.close()
  return (state.ema_params if config.sample.use_ema else state.params), step


def _suffix(config, num_timesteps: int) -> str:
  """'' for the default chain (ancestral, all steps, no guidance), else e.g. '_ddim50_eta0.0';
  then what the editing modes take: '_t0500', '_center', '_resample10_jump10'."""
  s = config.sample
  sampler, steps = s.sampler, int(s.steps) or num_timesteps
  out = ''
  if sampler != 'ancestral' or steps != num_timesteps:
    out += f'_{sampler}{steps}' + (f'_eta{s.eta}' if sampler == 'ddim' else '')
  if config.model.num_classes:
    out += f'_label{s.label}_w{s.guidance_scale}'
  if s.mode == 'edit':
    return out + f'_t0{s.t0}'
  if s.mode == 'inpaint':
    out += '_' + pathlib.Path(s.mask).stem  # A built-in shape or a file's name.
  if s.mode in ('inpaint', 'colorize') and s.resample > 1:
    out += f'_resample{s.resample}_jump{s.jump_length}'
  return out


def sample_from_workdir(config, workdir: str, experiment=None,
                        init_from: str | None = None) -> dict:
  """Restores the newest checkpoint of `workdir` (without one, the diffusers model
  `init_from`, see `ddpm_jax.interop.diffusers`) and writes the files of
  `config.sample.mode` (module docstring). Returns the paths."""
  # A data-parallel mesh: sampling replicates the parameters whatever mesh trained them.
  experiment = experiment or Experiment.from_config(config, mesh=sharding.make_mesh())
  params, step = _restore_params(config, workdir, experiment, init_from)
  s = config.sample
  num_timesteps = experiment.schedule.num_timesteps
  origin = f'checkpoint {step}' if step is not None else f'--init_from={init_from}'
  logging.info('Sampling (%s) from %s (%s parameters), %s.', s.mode, origin,
               'EMA' if s.use_ema else 'raw', generation.describe(config, num_timesteps))
  key = jax.random.PRNGKey(s.seed)
  label = f'step{step:08d}' if step is not None else 'imported'
  stem = os.path.join(workdir, 'samples', f'{s.mode if s.mode != "grid" else "sample"}_{label}'
                      f'_n{s.num}{_suffix(config, num_timesteps)}')
  is_main = jax.process_index() == 0
  jobs = {'grid': functools.partial(_grid, step=step), 'progressive': _progressive,
          'interpolate': _interpolate, 'reconstruct': _reconstruct}
  # Else inpaint | colorize | edit (config_checks allows no other mode).
  paths = jobs.get(s.mode, editing_job.run)(config, experiment, params, key, stem, is_main)
  if is_main:
    logging.info('Wrote %s', paths)
  return paths


def _grid(config, experiment, params, key, stem, is_main, step) -> dict:
  s = config.sample
  batch_size = min(s.batch_size, s.num)
  sample_fn = generation.make_sample_fn(experiment, batch_size)
  samples = generation.generate(sample_fn, params, key, s.num, batch_size)
  if not is_main:
    return {}
  labels = generation.sample_labels(config, batch_size)  # Those of each batch.
  labels = None if labels is None else np.resize(np.asarray(labels, np.int32), len(samples))
  paths = {'png': image_files.save_grid(stem + '.png', samples[:256]),
           'npz': image_files.save_npz(stem + '.npz', samples, labels,
                                       **({} if step is None else {'step': step}))}
  print(f'Samples: {paths["png"]} (grid of {min(256, len(samples))}), {paths["npz"]} '
        f'({len(samples)} uint8 images; '
        f'{generation.describe(config, experiment.schedule.num_timesteps)})')
  return paths


def progressive_steps(chain_length: int, frames: int) -> list[int]:
  """`frames` chain indices evenly spaced from the first step (n - 1) to the last (0),
  in the order the chain visits them."""
  frames = max(1, min(int(frames), chain_length))
  return np.unique(np.round(np.linspace(0, chain_length - 1, frames)).astype(int))[::-1].tolist()


def _progressive(config, experiment, params, key, stem, is_main) -> dict:
  chain = generation.chain_for(experiment)
  save_at = progressive_steps(chain.schedule.num_timesteps, config.sample.progressive_frames)
  sample_fn = generation.make_sample_fn(experiment, config.sample.num, save_at=save_at)
  x, traj = sample_fn(params, key)
  if not is_main:
    return {}
  xt, x0, fin = (image_files.to_uint8(jax.device_get(a)) for a in (traj['xt'],
                                                                   traj['pred_x0'], x))
  paths = {'xt_png': image_files.save_png(stem + '_xt.png', image_files.trajectory_grid(xt, fin)),
           'pred_x0_png': image_files.save_png(stem + '_pred_x0.png',
                                               image_files.trajectory_grid(x0, fin))}
  b = xt.shape[1]
  frames = [image_files.make_grid(np.concatenate([a, p]), ncols=b)
            for a, p in zip([*xt, fin], [*x0, fin])]
  paths['gif'] = image_files.save_gif(stem + '.gif', frames, scale=2 if xt.shape[2] <= 64 else 1)
  kept = np.asarray(chain.timesteps)[save_at]
  print(f'Progressive generation at t = {", ".join(str(int(k) + 1) for k in kept)}: '
        f'{paths["pred_x0_png"]}, {paths["xt_png"]}, {paths["gif"]}')
  return paths


def _interpolate(config, experiment, params, key, stem, is_main) -> dict:
  s = config.sample
  x = jnp.asarray(data.to_float(editing_inputs.split_images(config, 2 * s.num)))
  x_a, x_b = x[0::2], x[1::2]
  chain, denoise_fn, kwargs = generation.chain_setup(experiment, params,
                                                     generation.sample_labels(config, s.num))
  start = reverse_chains.chain_index(chain.timesteps, s.interp_t)
  lambdas = np.linspace(0.0, 1.0, s.interp_lambdas)
  run = jax.jit(lambda a, b, k: reverse_chains.interpolate(
      chain.schedule, denoise_fn, a, b, lambdas, start, k, **kwargs))
  out = image_files.to_uint8(jax.device_get(run(x_a, x_b, key)))  # (L, B, H, W, C)
  if not is_main:
    return {}
  rows = np.concatenate([image_files.to_uint8(x_a)[None], out, image_files.to_uint8(x_b)[None]])
  path = image_files.save_png(stem + '.png', image_files.trajectory_grid(rows))
  print(f'Interpolations at t = {int(chain.timesteps[start]) + 1} (rows: pairs; columns: x_a, '
        f'lambda = {", ".join(f"{l:.2f}" for l in lambdas)}, x_b): {path}')
  return {'png': path}


def _reconstruct(config, experiment, params, key, stem, is_main) -> dict:
  x = jnp.asarray(data.to_float(editing_inputs.split_images(config, config.sample.num)))
  chain, denoise_fn, kwargs = generation.chain_setup(experiment, params,
                                                     generation.sample_labels(config, len(x)))
  # DDIM with eta = 0 and no clipping both ways, whatever config.sample says: invertible.
  kwargs = {k: kwargs[k] for k in ('var_type', 'mean_type', 'timesteps')}

  def run(x):
    x_T = reverse_chains.ddim_encode(chain.schedule, denoise_fn, x, **kwargs)
    return x_T, reverse_chains.sample('ddim', chain.schedule, denoise_fn, x.shape, key, eta=0.0,
                                      clip_denoised=False, x_T=x_T, **kwargs)

  x_T, rec = jax.device_get(jax.jit(run)(x))
  mse = float(np.mean((np.asarray(rec) - np.asarray(x)) ** 2))
  if not is_main:
    return {}
  rows = image_files.to_uint8(np.stack([x, x_T / 3, rec]))  # Clipped to [-1, 1].
  path = image_files.save_png(stem + '.png', image_files.trajectory_grid(rows))
  print(f'DDIM reconstruction ({chain.schedule.num_timesteps} steps): MSE {mse:.2e} on '
        f'[-1, 1] images; {path} (columns: original, x_T / 3, reconstruction)')
  return {'png': path, 'mse': mse}

