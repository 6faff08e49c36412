"""The Inception evaluator: FID, Inception Score and KID of samples in pytorch-fid's FID
Inception-v3 (`ddpm_jax.metrics.inception`), and that network as a `FeatureNet`."""

from __future__ import annotations

import os

from ddpm_jax.errors import ConfigError
from ddpm_jax.evaluators.common import FeatureNet, SampleQuality
from ddpm_jax.metrics import inception, inception_weights


def feature_net(weights: str, batch_size: int = 100, key: str = 'config.evals.inception.weights',
                progress: bool = False) -> FeatureNet:
  """The FID Inception-v3 with the weights at `weights`: (pool3 (N, 2048), logits (N, 1008)).
  A file that is not those weights is a one-line error naming `key` (the config key or flag
  that gave the path); a missing file is a `FileNotFoundError` that says where to download it."""
  try:
    variables = inception_weights.load_inception_params(weights, key)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (zip, pickle and layout errors)
    raise ConfigError(f'{key}={weights!r} is not the FID Inception weights: '
                      f'{type(e).__name__}: {e}') from e
  return FeatureNet(
      metric='fid', dim=inception.POOL_FEATURES, channels=3, image_size=None,
      extract=lambda x: inception.extract_features(variables, x, batch_size, progress=progress),
      description=(f"pytorch-fid's FID Inception-v3 ({os.path.basename(weights)}; bilinear "
                   "resize to 299x299 as pytorch-fid, which differs from the resize of the "
                   "paper's TensorFlow code)"))


class Inception(SampleQuality):
  """`run(params)`: `fid`, `is` (over `spec.is_splits` splits) and `kid` of `num` samples
  against the reference split; only when `spec.weights` is given."""
  cache_name = 'inception'

  def __init__(self, name, spec, suite, num):
    super().__init__(name, spec, suite, num)
    self.is_splits = spec.is_splits

  @staticmethod
  def applies(spec, config) -> bool:
    del config
    return bool(spec.weights)

  def load_net(self) -> FeatureNet:
    return feature_net(self.spec.weights, self.spec.batch_size,
                       f'config.evals.{self.name}.weights')
