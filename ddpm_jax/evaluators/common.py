"""What the evaluators share: reference statistics computed once and cached in the workdir, and
the feature networks' sample-quality metrics (also `python -m ddpm_jax.fid`'s)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import numpy as np

from ddpm_jax import data, generation, image_files
from ddpm_jax.metrics import fid_is_kid


def cached(path: str, compute: Callable[[], dict]) -> dict:
  """The arrays of the `.npz` at `path` if it exists, else `compute()`'s, saved there by
  process 0: a workdir's reference statistics are computed once."""
  if os.path.exists(path):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  arrays = compute()
  if jax.process_index() == 0:  # Written whole or not at all: a killed job leaves no bad cache.
    image_files.write_atomic(path, lambda tmp: np.savez(tmp, **arrays))
  return arrays


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A network whose features measure sample quality.

  `metric` names its Fréchet distance ('fid' for Inception, whose logits also give IS and
  whose features give KID; 'fd_fmnist'); `extract(uint8 images) -> (features, logits or None)`
  takes `channels`-channel images (`image_size` square, or any size when None).
  """
  metric: str
  extract: Callable[[np.ndarray], tuple]
  dim: int
  channels: int
  image_size: int | None
  description: str


def quality(net: FeatureNet, features, logits, reference, is_splits: int = 10) -> dict:
  """The metrics of samples' `features` (and `logits`) against `reference` (features or their
  statistics `(mu, sigma)`): `net.metric`, and with Inception `is` / `is_std` and, against
  features, `kid` / `kid_std`."""
  q = fid_is_kid.sample_quality(features, reference, logits if net.metric == 'fid' else None,
                                is_splits=is_splits)
  if net.metric != 'fid':  # IS and KID are defined on Inception's outputs only.
    return {net.metric: q['fd']}
  return {('fid' if k == 'fd' else k): v for k, v in q.items()}


class SampleQuality:
  """An evaluator of `num` samples' quality in a `FeatureNet`'s features, against the
  `reference_split`'s first `reference_examples` images (cached in the workdir as
  `<cache_name>_ref_<split>.npz`). Subclasses give the network (`load_net`)."""
  cache_name = ''
  sizes = ('train_samples', 'num_samples')  # Training-time / eval-job sizes in the spec.
  is_splits = 1  # Inception Score splits (Inception only).

  def __init__(self, name: str, spec, suite, num: int):
    self.name, self.spec, self.suite, self.num = name, spec, suite, num
    self.experiment = suite.experiment
    self.net = None  # Loaded by `check_inputs`.

  def load_net(self) -> FeatureNet:
    raise NotImplementedError

  def check_inputs(self) -> None:
    """Opens the reference split and loads the network, before any work."""
    data.open_source(self.experiment.config.data, self.spec.reference_split)
    self.net = self.load_net()

  def run(self, params) -> dict:
    self.net = self.net or self.load_net()
    features, logits = self.net.extract(self.suite.samples(params, self.num))
    name = f'{self.cache_name}_ref_{self.spec.reference_split}.npz'
    ref = cached(os.path.join(self.suite.workdir, name), self._reference)
    ref = ref['features'] if 'features' in ref else (ref['mu'], ref['sigma'])
    return quality(self.net, features, logits, ref, self.is_splits)

  def _reference(self) -> dict:
    """The reference images' Inception features (KID needs them), else their statistics."""
    images = data.load_split(self.experiment.config.data, self.spec.reference_split,
                             max_examples=self.spec.reference_examples)
    features = self.net.extract(images)[0]
    if self.net.metric == 'fid':
      return {'features': features}
    mu, sigma = fid_is_kid.feature_statistics(features)
    return {'mu': mu, 'sigma': sigma, 'num': len(images)}

  def describe(self) -> str:
    """This evaluator's part of the protocol line."""
    chain = generation.describe(self.experiment.config, self.experiment.schedule.num_timesteps)
    return (f'{self.cache_name}: {self.num} samples ({chain}, uint8-quantised) against '
            f'reference statistics of the {self.spec.reference_split} split')
