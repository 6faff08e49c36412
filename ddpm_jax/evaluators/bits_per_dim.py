"""The bits/dim evaluator: the full variational bound (eq. 5, `ddpm_jax.metrics.bpd`) of the EMA
model on the first `num` uint8 images of `config.evals.<name>.split`."""

from __future__ import annotations

import jax
import numpy as np
from tqdm.auto import tqdm

from ddpm_jax import data, sharding
from ddpm_jax.metrics import bpd as bpd_lib


class BitsPerDim:
  """`run(params)`: mean bits/dim (`bpd`) and its prior, decoder and KL-sum terms over `num`
  images, in batches of `spec.batch_size`, each batch's noise keyed by `config.eval.seed` folded
  with its index; also the per-term means (T,) as `bpd_terms` (an array, for the results
  writer's `.npz` and plot)."""

  sizes = ('train_examples', 'num_examples')  # Training-time / eval-job sizes in the spec.

  def __init__(self, name: str, spec, suite, num: int):
    self.name, self.spec, self.num = name, spec, num
    self.experiment, self.progress = suite.experiment, suite.progress
    self._images = self._fn = None  # Loaded and compiled by the first `run`.

  @staticmethod
  def applies(spec, config) -> bool:
    del spec, config
    return True

  def check_inputs(self) -> None:
    data.open_source(self.experiment.config.data, self.spec.split)

  def _bpd_fn(self, batch_size: int):
    exp, cfg = self.experiment, self.experiment.config

    def fn(params, x0, key):
      def denoise_fn(x, t):
        return exp.model.apply({'params': params}, x, t, train=False)
      return bpd_lib.bpd_terms(exp.schedule, denoise_fn, x0, key,
                               mean_type=cfg.diffusion.mean_type,
                               var_type=cfg.diffusion.var_type,
                               clip_denoised=self.spec.clip_denoised)

    repl = sharding.replicated(exp.mesh)
    batch = sharding.batch_sharding(exp.mesh) if batch_size % exp.mesh.size == 0 else repl
    return jax.jit(fn, in_shardings=(repl, batch, repl), out_shardings=batch)

  def run(self, params) -> dict:
    if self._images is None:
      self._images = data.load_split(self.experiment.config.data, self.spec.split,
                                     max_examples=self.num)
    images = self._images
    bs = min(self.spec.batch_size, len(images))
    self._fn = self._fn or self._bpd_fn(bs)
    key = jax.random.PRNGKey(self.experiment.config.eval.seed)
    out = []
    n_batches = len(images) // bs
    for i in tqdm(range(n_batches), desc='bits/dim', unit='batch',
                  disable=not self.progress or jax.process_index() != 0):
      x0 = images[i * bs:(i + 1) * bs].astype(np.float32) / 127.5 - 1.0
      out.append(jax.device_get(self._fn(params, x0, jax.random.fold_in(key, i))))
    summary = bpd_lib.summarize(jax.tree.map(lambda *xs: np.concatenate(xs), *out))
    summary['bpd_terms'] = summary.pop('terms')
    return {**summary, 'bpd_examples': n_batches * bs}

  def describe(self) -> str:
    """This evaluator's part of the protocol line."""
    cfg = self.experiment.config
    return (f'bits/dim on {cfg.data.dataset}/{self.spec.split} ({self.num} uint8 images, full '
            f'T={cfg.diffusion.num_timesteps} bound, clip={self.spec.clip_denoised})')
