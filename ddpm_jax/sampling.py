"""Generating images from a trained model: jitted, sharded over every device, in batches.

`config.sample` picks the chain: `sampler` (ancestral | ddim), `steps` (0 = all T; else a
respaced chain of that many evenly spaced steps), `eta` (DDIM), `guidance_scale` and `label`
(class-conditional models), and `mode` (what `--mode=sample` writes: a grid of samples, a
progressive-generation figure, interpolations, or DDIM reconstructions).
"""

from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ddpm_jax import (checkpointing, data, diffusion, images, progressive, samplers, schedules,
                      sharding)
from ddpm_jax.checkpointing import Checkpointer


# ---------------------------------------------------------------------------------------------
# The chain and the denoiser described by a config.


def base_betas(diffusion_config) -> np.ndarray:
  """The float64 betas of `config.diffusion` (as `schedules.schedule_from_config` builds them)."""
  return schedules.make_betas(diffusion_config.schedule, diffusion_config.num_timesteps,
                              beta_start=diffusion_config.beta_start,
                              beta_end=diffusion_config.beta_end)


def chain_for(experiment, steps: int | None = None) -> samplers.Respaced:
  """The sampling chain of `config.sample.steps` (or `steps`): the full schedule with
  timesteps 0..T-1, or the respaced one."""
  cfg = experiment.config
  num_timesteps = experiment.schedule.num_timesteps
  steps = int(cfg.sample.steps if steps is None else steps) or num_timesteps
  if steps == num_timesteps:
    return samplers.Respaced(experiment.schedule, jnp.arange(num_timesteps, dtype=jnp.int32))
  betas = base_betas(cfg.diffusion)
  if not np.array_equal(betas.astype(np.float32), np.asarray(experiment.schedule.betas)):
    betas = experiment.schedule.betas  # The experiment's schedule is built another way.
  return samplers.respace(betas, samplers.space_timesteps(num_timesteps, steps))


def sample_labels(config, batch_size: int):
  """Labels of a class-conditional model's samples (`config.sample.label`, -1 = 0, 1, ..,
  num_classes - 1 in turn), or None for an unconditional model."""
  num_classes = int(config.model.num_classes)
  if num_classes == 0:
    return None
  label = int(config.sample.label)
  if label >= 0:
    return jnp.full((batch_size,), label, jnp.int32)
  return jnp.arange(batch_size, dtype=jnp.int32) % num_classes


def generated_labels(config, batch_size: int, num: int):
  """The labels of `num` samples that `generate` made in batches of `batch_size` (each batch
  labelled by `sample_labels`), as int32 NumPy, or None for an unconditional model."""
  labels = sample_labels(config, batch_size)
  if labels is None:
    return None
  return np.resize(np.asarray(labels, np.int32), num)


def guided_output(cond_out, uncond_out, guidance_scale: float, var_type: str):
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6): (1 + w) out_cond - w out_uncond on
  the mean output. Because eps, x0, v and mu are affine in each other at fixed (x_t, t) and the
  weights sum to one, this is eps-guidance for every parameterisation. A learned variance is
  taken from the conditional output."""
  mean_c, var_c = diffusion.split_model_output(cond_out, var_type)
  mean_u, _ = diffusion.split_model_output(uncond_out, var_type)
  guided = (1.0 + guidance_scale) * mean_c - guidance_scale * mean_u
  return guided if var_c is None else jnp.concatenate([guided, var_c], axis=-1)


def make_denoise_fn(experiment, params, labels=None, guidance_scale: float = 0.0):
  """`denoise_fn(x_t, t)` of the network; with labels and w != 0, the guided output from one
  network call on the doubled batch (conditional and null labels)."""
  model = experiment.model
  num_classes = int(experiment.config.model.num_classes)
  var_type = experiment.config.diffusion.var_type

  def denoise_fn(x, t):
    if labels is None:
      return model.apply({'params': params}, x, t, train=False)
    if guidance_scale == 0:
      return model.apply({'params': params}, x, t, labels, train=False)
    null = jnp.full_like(labels, num_classes)
    out = model.apply({'params': params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                      jnp.concatenate([labels, null]), train=False)
    cond, uncond = jnp.split(out, 2, axis=0)
    return guided_output(cond, uncond, guidance_scale, var_type)

  return denoise_fn


def chain_setup(experiment, chain: samplers.Respaced, denoise_fn):
  """(denoise_fn, sampler keyword arguments) for running `chain` with `config.sample`.

  A respaced chain passes `timesteps`; a `mu` network is then converted to an x_0 predictor
  with the base schedule (`samplers.as_x0_denoiser`).
  """
  cfg = experiment.config
  s = cfg.sample
  mean_type, var_type = cfg.diffusion.mean_type, cfg.diffusion.var_type
  respaced = chain.schedule.num_timesteps != experiment.schedule.num_timesteps
  if respaced and mean_type == 'mu':
    denoise_fn = samplers.as_x0_denoiser(experiment.schedule, denoise_fn, mean_type, var_type)
    mean_type = 'x0'
  kwargs = dict(var_type=var_type, mean_type=mean_type, clip_denoised=s.clip_denoised,
                timesteps=chain.timesteps if respaced else None)
  if s.sampler == 'ddim':
    kwargs['eta'] = float(s.eta)
  return denoise_fn, kwargs


def describe(config, num_timesteps: int) -> str:
  """E.g. 'ancestral, 1000 steps' or 'ddim eta=0.0, 50 of 1000 steps, guidance 3.0'."""
  s = config.sample
  sampler = s.sampler
  steps = int(s.steps) or num_timesteps
  text = f'{sampler}' + (f' eta={s.eta}' if sampler == 'ddim' else '')
  text += (f', {steps} steps' if steps == num_timesteps else
           f', {steps} of {num_timesteps} steps')
  if config.model.num_classes:
    text += f', label {s.label}, guidance {s.guidance_scale}'
  return text


def make_sample_fn(experiment, batch_size: int, save_at=None):
  """A jitted `(params, key) -> images` in [-1, 1] running the chain of `config.sample` for
  `batch_size` images (with `save_at`, chain indices: `-> (images, trajectory)`).

  The batch is split over the mesh's devices when it divides their count.
  """
  cfg = experiment.config
  mesh = experiment.mesh
  shape = (batch_size,) + experiment.image_shape
  n_dev = sharding.num_batch_shards(mesh)
  out_sharding = (sharding.batch_sharding(mesh) if batch_size % n_dev == 0
                  else sharding.replicated(mesh))
  chain = chain_for(experiment)
  sampler = cfg.sample.sampler
  labels = sample_labels(cfg, batch_size)
  guidance = float(cfg.sample.guidance_scale)

  def sample(params, key):
    x_T = jax.random.normal(jax.random.fold_in(key, 0x7fffffff), shape)
    x_T = jax.lax.with_sharding_constraint(x_T, out_sharding)
    denoise_fn, kwargs = chain_setup(experiment, chain,
                                     make_denoise_fn(experiment, params, labels, guidance))
    return samplers.sample(sampler, chain.schedule, denoise_fn, shape, key, x_T=x_T,
                           save_at=save_at, **kwargs)

  repl = sharding.replicated(mesh)
  if save_at is not None:
    return jax.jit(sample, in_shardings=(repl, repl))
  return jax.jit(sample, in_shardings=(repl, repl), out_shardings=out_sharding)


def generate(sample_fn, params, key, num: int, batch_size: int, progress: bool = True):
  """`num` uint8 images from ceil(num / batch_size) calls of `sample_fn`, batch i keyed by
  `fold_in(key, i)`. Returns a NumPy array (num, H, W, C) on every process."""
  n_batches = math.ceil(num / batch_size)
  out = []
  for i in tqdm(range(n_batches), desc='sampling', unit='batch',
                disable=not progress or jax.process_index() != 0):
    x = sample_fn(params, jax.random.fold_in(key, i))
    out.append(images.to_uint8(multihost_utils.process_allgather(x, tiled=True)))
  return np.concatenate(out)[:num]


# ---------------------------------------------------------------------------------------------
# `--mode=sample`.


def _restore_params(config, workdir: str, experiment, init_from: str | None = None):
  """(params, step) of the newest checkpoint; with `init_from` and no checkpoint in the
  workdir, (that diffusers model's params, None)."""
  if init_from and not checkpointing.has_checkpoint(workdir):
    from ddpm_jax.interop import diffusers as hf_interop  # pylint: disable=g-import-not-at-top
    params, folder = hf_interop.load_for_experiment(init_from, experiment)
    if jax.process_index() == 0:
      print(f'No checkpoint in {workdir}: using --init_from={init_from} ({folder.unet_dir}).',
            flush=True)
    return params, None
  # Read-only: a writer's start-up clean-up would delete a running trainer's save in flight.
  checkpointer = Checkpointer(workdir, max_to_keep=None, async_save=False, read_only=True,
                              config=config)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(
        f'No checkpoint in {checkpointer.directory}: train first with --mode=train '
        f'--workdir={workdir}.')
  state, step = checkpointer.restore_latest_valid(experiment.abstract_state())
  checkpointer.close()
  return (state.ema_params if config.sample.use_ema else state.params), step


def _suffix(config, num_timesteps: int) -> str:
  """'' for the default chain (ancestral, all steps, no guidance), else e.g. '_ddim50_eta0.0'."""
  s = config.sample
  sampler, steps = s.sampler, int(s.steps) or num_timesteps
  out = ''
  if sampler != 'ancestral' or steps != num_timesteps:
    out += f'_{sampler}{steps}' + (f'_eta{s.eta}' if sampler == 'ddim' else '')
  if config.model.num_classes:
    out += f'_label{s.label}_w{s.guidance_scale}'
  return out


def _data_images(config, num: int) -> np.ndarray:
  """The first `num` images of `config.sample.data_split`, float32 in [-1, 1]."""
  imgs = data.load_split(config.data, config.sample.data_split, max_examples=num)
  if len(imgs) < num:
    raise ValueError(f'The {config.sample.data_split!r} split has {len(imgs)} images; '
                     f'{num} are needed.')
  return data.to_float(imgs)


def sample_from_workdir(config, workdir: str, experiment=None,
                        init_from: str | None = None) -> dict:
  """`--mode=sample`: restore the newest checkpoint of `workdir` (without one, the diffusers
  model `init_from`, see `ddpm_jax.interop.diffusers`) and write, under `workdir/samples/`, by
  `config.sample.mode`:

  grid:        `config.sample.num` samples as a PNG grid (<= 256) and an `.npz` in the
               improved-diffusion / ADM evaluator's layout (`arr_0` uint8 N x H x W x C, and
               for a class-conditional model `arr_1`, the labels).
  progressive: x_t and predicted x_0 at `progressive_frames` steps (Fig. 6) as PNG grids and a GIF.
  interpolate: `num` pairs of `data_split` images interpolated at `interp_t` (Fig. 8), PNG.
  reconstruct: `num` `data_split` images DDIM-encoded to x_T (eta = 0) and decoded back, PNG
               (columns: original, x_T / 3, reconstruction) and the mean squared error.
  inpaint, colorize, edit: controllable generation on `num` images of `input_dir` or
               `data_split` (`ddpm_jax.editing`): PNG of input | masked input (grey image,
               noised input) | result, and the results as `arr_0` of an `.npz`.
  Returns the paths.
  """
  from ddpm_jax.experiment import Experiment  # Local import: experiment imports the models.
  experiment = experiment or Experiment.from_config(config)
  params, step = _restore_params(config, workdir, experiment, init_from)
  mode = config.sample.mode
  num_timesteps = experiment.schedule.num_timesteps
  origin = f'checkpoint {step}' if step is not None else f'--init_from={init_from}'
  logging.info('Sampling (%s) from %s (%s parameters), %s.', mode, origin,
               'EMA' if config.sample.use_ema else 'raw', describe(config, num_timesteps))
  key = jax.random.PRNGKey(config.sample.seed)
  label = f'step{step:08d}' if step is not None else 'imported'
  stem = os.path.join(workdir, 'samples', f'{mode if mode != "grid" else "sample"}_{label}'
                      f'_n{config.sample.num}{_suffix(config, num_timesteps)}')
  is_main = jax.process_index() == 0
  paths = {}
  if mode == 'grid':
    batch_size = min(config.sample.batch_size, config.sample.num)
    sample_fn = make_sample_fn(experiment, batch_size)
    samples = generate(sample_fn, params, key, config.sample.num, batch_size)
    if is_main:
      paths['png'] = images.save_grid(stem + '.png', samples[:256])
      paths['npz'] = images.save_npz(stem + '.npz', samples,
                                     generated_labels(config, batch_size, len(samples)),
                                     **({} if step is None else {'step': step}))
      print(f'Samples: {paths["png"]} (grid of {min(256, len(samples))}), {paths["npz"]} '
            f'({len(samples)} uint8 images; {describe(config, num_timesteps)})')
  elif mode == 'progressive':
    n = config.sample.num
    chain = chain_for(experiment)
    save_at = progressive.progressive_steps(chain.schedule.num_timesteps,
                                            config.sample.progressive_frames)
    x, traj = make_sample_fn(experiment, n, save_at=save_at)(params, key)
    if is_main:
      paths = progressive.write_progressive(stem, jax.device_get(traj), jax.device_get(x))
      kept = np.asarray(chain.timesteps)[save_at]
      print(f'Progressive generation at t = {", ".join(str(int(k) + 1) for k in kept)}: '
            f'{paths["pred_x0_png"]}, {paths["xt_png"]}, {paths["gif"]}')
  elif mode == 'interpolate':
    paths = _interpolate(config, experiment, params, key, stem, is_main)
  elif mode == 'reconstruct':
    paths = _reconstruct(config, experiment, params, stem, is_main)
  elif mode in ('inpaint', 'colorize', 'edit'):
    from ddpm_jax import editing  # pylint: disable=g-import-not-at-top
    paths = editing.run(config, experiment, params, key, stem, is_main)
  else:
    raise ValueError(f'Unknown config.sample.mode {mode!r}.')
  if is_main:
    logging.info('Wrote %s', paths)
  return paths


def _interpolate(config, experiment, params, key, stem, is_main) -> dict:
  s = config.sample
  pairs = s.num
  x = jnp.asarray(_data_images(config, 2 * pairs))
  x_a, x_b = x[0::2], x[1::2]
  chain = chain_for(experiment)
  start = progressive.interpolation_start(chain.timesteps, s.interp_t)
  lambdas = np.linspace(0.0, 1.0, s.interp_lambdas)
  labels = sample_labels(config, pairs)
  denoise_fn, kwargs = chain_setup(experiment, chain, make_denoise_fn(
      experiment, params, labels, float(s.guidance_scale)))
  run = jax.jit(lambda a, b, k: progressive.interpolate(
      chain.schedule, denoise_fn, a, b, lambdas, start, k, sampler=s.sampler, **kwargs))
  out = images.to_uint8(jax.device_get(run(x_a, x_b, key)))  # (L, B, H, W, C)
  if not is_main:
    return {}
  rows = np.concatenate([images.to_uint8(x_a)[None], out, images.to_uint8(x_b)[None]])
  path = images.save_png(stem + '.png', progressive.trajectory_grid(rows))
  print(f'Interpolations at t = {int(chain.timesteps[start]) + 1} (rows: pairs; columns: x_a, '
        f'lambda = {", ".join(f"{l:.2f}" for l in lambdas)}, x_b): {path}')
  return {'png': path}


def _reconstruct(config, experiment, params, stem, is_main) -> dict:
  s = config.sample
  x = jnp.asarray(_data_images(config, s.num))
  chain = chain_for(experiment)
  labels = sample_labels(config, s.num)
  denoise_fn, kwargs = chain_setup(experiment, chain, make_denoise_fn(
      experiment, params, labels, float(s.guidance_scale)))
  kwargs.pop('eta', None)

  def run(x):
    enc_kwargs = dict(kwargs, clip_denoised=False)
    x_T = samplers.ddim_encode(chain.schedule, denoise_fn, x, **enc_kwargs)
    rec = samplers.ddim_sample(chain.schedule, denoise_fn, x.shape, jax.random.PRNGKey(0),
                               eta=0.0, x_T=x_T, **enc_kwargs)
    return x_T, rec

  x_T, rec = jax.device_get(jax.jit(run)(x))
  mse = float(np.mean((np.asarray(rec) - np.asarray(x)) ** 2))
  if not is_main:
    return {}
  rows = np.stack([images.to_uint8(x), images.to_uint8(np.clip(x_T / 3, -1, 1)),
                   images.to_uint8(rec)])
  path = images.save_png(stem + '.png', progressive.trajectory_grid(rows))
  print(f'DDIM reconstruction ({chain.schedule.num_timesteps} steps): MSE {mse:.2e} on '
        f'[-1, 1] images; {path} (columns: original, x_T / 3, reconstruction)')
  return {'png': path, 'mse': mse}
