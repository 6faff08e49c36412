"""Generating images with the chain of `config.sample` (sampler, respaced steps, eta, guidance):
jitted, sharded over every device, in batches. Training's sample grids, the evaluators and
`--mode=sample` (`ddpm_jax.sample_job`) all generate through this module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ddpm_jax import diffusion, image_files, reverse_chains, schedules, sharding


def chain_for(experiment) -> reverse_chains.Respaced:
  """The sampling chain of `config.sample.steps`: the full schedule with timesteps 0..T-1, or
  the respaced one (from the float64 betas of the config)."""
  num_timesteps = experiment.schedule.num_timesteps
  steps = int(experiment.config.sample.steps) or num_timesteps
  if steps == num_timesteps:
    return reverse_chains.Respaced(experiment.schedule,
                                   jnp.arange(num_timesteps, dtype=jnp.int32))
  return reverse_chains.respace(schedules.config_betas(experiment.config.diffusion),
                                reverse_chains.space_timesteps(num_timesteps, steps))


def sample_labels(config, batch_size: int):
  """Labels of a class-conditional model's samples (`config.sample.label`, -1 = 0, 1, ..,
  num_classes - 1 in turn), or None for an unconditional model."""
  if not config.model.num_classes:
    return None
  if config.sample.label >= 0:
    return jnp.full((batch_size,), config.sample.label, jnp.int32)
  return jnp.arange(batch_size, dtype=jnp.int32) % config.model.num_classes


def guided_output(cond_out, uncond_out, guidance_scale: float, var_type: str):
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6): (1 + w) out_cond - w out_uncond on
  the mean output. Because eps, x0, v and mu are affine in each other at fixed (x_t, t) and the
  weights sum to one, this is eps-guidance for every parameterisation. A learned variance is
  taken from the conditional output."""
  mean_c, var_c = diffusion.split_model_output(cond_out, var_type)
  mean_u, _ = diffusion.split_model_output(uncond_out, var_type)
  guided = (1.0 + guidance_scale) * mean_c - guidance_scale * mean_u
  return guided if var_c is None else jnp.concatenate([guided, var_c], axis=-1)


def chain_setup(experiment, params, labels=None):
  """(chain, denoise_fn, keyword arguments of `reverse_chains.sample`) for running the chain of
  `config.sample` (`chain_for`) with the network's `params`.

  With `labels` and guidance_scale w != 0, `denoise_fn` is the guided output of one network
  call on the doubled batch (conditional and null labels). A respaced chain passes
  `timesteps`; a `mu` network is then converted to an x_0 predictor with the base schedule
  (`reverse_chains.as_x0_denoiser`).
  """
  cfg = experiment.config
  s, f = cfg.sample, cfg.diffusion
  model, w = experiment.model, float(s.guidance_scale)

  def denoise_fn(x, t):
    if labels is None or w == 0:
      return model.apply({'params': params}, x, t, labels, train=False)
    null = jnp.full_like(labels, cfg.model.num_classes)
    out = model.apply({'params': params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                      jnp.concatenate([labels, null]), train=False)
    return guided_output(*jnp.split(out, 2, axis=0), w, f.var_type)

  chain, mean_type, fn = chain_for(experiment), f.mean_type, denoise_fn
  respaced = chain.schedule.num_timesteps != experiment.schedule.num_timesteps
  if respaced and mean_type == 'mu':
    fn = reverse_chains.as_x0_denoiser(experiment.schedule, denoise_fn, mean_type, f.var_type)
    mean_type = 'x0'
  return chain, fn, dict(sampler=s.sampler, eta=float(s.eta), var_type=f.var_type,
                         mean_type=mean_type, clip_denoised=s.clip_denoised,
                         timesteps=chain.timesteps if respaced else None)


def describe(config, num_timesteps: int) -> str:
  """E.g. 'ancestral, 1000 steps' or 'ddim eta=0.0, 50 of 1000 steps, guidance 3.0'."""
  s = config.sample
  steps = int(s.steps) or num_timesteps
  text = s.sampler + (f' eta={s.eta}' if s.sampler == 'ddim' else '')
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
  mesh = experiment.mesh
  shape = (batch_size,) + experiment.image_shape
  out_sharding = (sharding.batch_sharding(mesh)
                  if batch_size % sharding.num_batch_shards(mesh) == 0
                  else sharding.replicated(mesh))
  labels = sample_labels(experiment.config, batch_size)

  def sample(params, key):
    x_T = jax.random.normal(jax.random.fold_in(key, 0x7fffffff), shape)
    x_T = jax.lax.with_sharding_constraint(x_T, out_sharding)
    chain, denoise_fn, kwargs = chain_setup(experiment, params, labels)
    return reverse_chains.sample(schedule=chain.schedule, denoise_fn=denoise_fn, shape=shape,
                                 key=key, x_T=x_T, save_at=save_at, **kwargs)

  repl = sharding.replicated(mesh)
  return jax.jit(sample, in_shardings=(repl, repl),
                 out_shardings=out_sharding if save_at is None else (out_sharding, repl))


def generate(sample_fn, params, key, num: int, batch_size: int, progress: bool = True):
  """`num` uint8 images from ceil(num / batch_size) calls of `sample_fn`, batch i keyed by
  `fold_in(key, i)`. Returns a NumPy array (num, H, W, C) on every process."""
  out = []
  for i in tqdm(range(math.ceil(num / batch_size)), desc='sampling', unit='batch',
                disable=not progress or jax.process_index() != 0):
    x = sample_fn(params, jax.random.fold_in(key, i))
    out.append(image_files.to_uint8(multihost_utils.process_allgather(x, tiled=True)))
  return np.concatenate(out)[:num]
