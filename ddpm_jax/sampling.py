"""Generating images from a trained model: jitted, sharded over every device, in batches."""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ddpm_jax import images, samplers, sharding
from ddpm_jax.checkpointing import Checkpointer


def make_sample_fn(experiment, batch_size: int):
  """A jitted `(params, key) -> images` running Algorithm 2 for `batch_size` images in [-1, 1].

  The batch is split over the mesh's `data` axis when it divides the device count.
  """
  cfg = experiment.config
  mesh = experiment.mesh
  shape = (batch_size,) + experiment.image_shape
  n_dev = mesh.shape[sharding.DATA_AXIS]
  out_sharding = (sharding.batch_sharding(mesh) if batch_size % n_dev == 0
                  else sharding.replicated(mesh))

  def sample(params, key):
    x_T = jax.random.normal(jax.random.fold_in(key, 0x7fffffff), shape)
    x_T = jax.lax.with_sharding_constraint(x_T, out_sharding)

    def denoise_fn(x, t):
      return experiment.model.apply({'params': params}, x, t, train=False)

    return samplers.ancestral_sample(
        experiment.schedule, denoise_fn, shape, key, var_type=cfg.diffusion.var_type,
        mean_type=cfg.diffusion.mean_type, clip_denoised=cfg.sample.clip_denoised, x_T=x_T)

  repl = sharding.replicated(mesh)
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


def sample_from_workdir(config, workdir: str, experiment=None) -> dict:
  """`--mode=sample`: restore the newest checkpoint of `workdir` and write `config.sample.num`
  samples as a PNG grid and a uint8 `.npz` under `workdir/samples/`. Returns the paths."""
  from ddpm_jax.experiment import Experiment  # Local import: experiment imports the models.
  experiment = experiment or Experiment.from_config(config)
  checkpointer = Checkpointer(workdir, max_to_keep=None, async_save=False)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(
        f'No checkpoint in {checkpointer.directory}: train first with --mode=train '
        f'--workdir={workdir}.')
  state, step = checkpointer.restore_latest_valid(experiment.abstract_state())
  checkpointer.close()
  params = state.ema_params if config.sample.use_ema else state.params
  batch_size = min(config.sample.batch_size, config.sample.num)
  sample_fn = make_sample_fn(experiment, batch_size)
  logging.info('Sampling %d images from checkpoint %d (%s parameters), %d steps, batch %d.',
               config.sample.num, step, 'EMA' if config.sample.use_ema else 'raw',
               experiment.schedule.num_timesteps, batch_size)
  samples = generate(sample_fn, params, jax.random.PRNGKey(config.sample.seed),
                     config.sample.num, batch_size)
  paths = {}
  if jax.process_index() == 0:
    stem = os.path.join(workdir, 'samples', f'sample_step{step:08d}_n{config.sample.num}')
    paths['png'] = images.save_grid(stem + '.png', samples[:256])
    paths['npz'] = images.save_npz(stem + '.npz', samples, step=step)
    logging.info('Wrote %s and %s', paths['png'], paths['npz'])
    print(f'Samples: {paths["png"]} (grid of {min(256, len(samples))}), {paths["npz"]} '
          f'({len(samples)} uint8 images)')
  return paths
