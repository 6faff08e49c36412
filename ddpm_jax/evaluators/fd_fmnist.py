"""The FD-FMNIST evaluator: the Fréchet distance between samples and Fashion-MNIST in the 128-d
features of ddpm-jax's own classifier (`ddpm_jax.metrics.fmnist_classifier`), and that
classifier as a `FeatureNet`. Comparable only with itself, never with FID."""

from __future__ import annotations

from ddpm_jax.evaluators.common import FeatureNet, SampleQuality
from ddpm_jax.metrics import fmnist_classifier as fc


def feature_net() -> FeatureNet:
  """The shipped Fashion-MNIST classifier: features (N, 128) of 32x32 grey uint8 images."""
  params = fc.load_params()
  return FeatureNet(metric='fd_fmnist', dim=fc.FEATURE_DIM, channels=1,
                    image_size=fc.IMAGE_SIZE,
                    extract=lambda x: (fc.features_and_logits(params, x)[0], None),
                    description="ddpm-jax's Fashion-MNIST classifier (FD-FMNIST, 128-d "
                                'features)')


class FdFmnist(SampleQuality):
  """`run(params)`: `fd_fmnist` of `num` samples against the reference split; only for
  Fashion-MNIST at the classifier's 32x32x1."""
  cache_name = 'fd_fmnist'

  @staticmethod
  def applies(spec, config) -> bool:
    del spec
    d = config.data
    return (d.dataset, d.image_size, d.channels) == ('fashion_mnist', fc.IMAGE_SIZE, 1)

  def load_net(self) -> FeatureNet:
    return feature_net()
