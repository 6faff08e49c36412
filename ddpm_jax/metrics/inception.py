"""The FID Inception-v3 network in Flax (its weights: `ddpm_jax.metrics.inception_weights`).

This is the "2015-12-05" Inception-v3 graph that TF-GAN / the original FID and Inception Score code
use, in the form pytorch-fid gives it (`pytorch_fid.inception.fid_inception_v3`): torchvision's
`Inception3` with 1008 output classes, no auxiliary head, and three patches to match TensorFlow:

* `FIDInceptionA`, `FIDInceptionC` and the first `FIDInceptionE` (Mixed_5b-d, Mixed_6b-e, Mixed_7b)
  average-pool their pooling branch over a 3x3 window that excludes the zero padding
  (`count_include_pad=False`), as TensorFlow's average pool does;
* the second `FIDInceptionE` (Mixed_7c) max-pools that branch instead (a quirk of the TF graph);
* Mixed_6a (InceptionB) and Mixed_7a (InceptionD) are torchvision's blocks unchanged.

Every convolution is `BasicConv2d`: conv without bias -> BatchNorm (eps 1e-3, running statistics)
-> ReLU. Layout is NHWC. Module names equal the PyTorch attribute names, so that a pytorch-fid
state_dict key such as `Mixed_5b.branch5x5_1.conv.weight` is the Flax path
`params/Mixed_5b/branch5x5_1/conv/kernel` (see `inception_weights.torch_state_dict_to_flax`).
Inputs are preprocessed as pytorch-fid does (`preprocess`).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.metrics import fid_is_kid

INCEPTION_IMAGE_SIZE = 299
NUM_CLASSES = 1008  # 1000 ImageNet classes + 8 unused outputs of the 2015 TF graph.
POOL_FEATURES = 2048
BATCHNORM_EPSILON = 1e-3
PRECISION = jax.lax.Precision.HIGHEST  # float32 matmuls and convolutions, also on GPU / TPU.


def preprocess(images: jnp.ndarray) -> jnp.ndarray:
  """pytorch-fid's input transform: (N, H, W, C) values in [0, 255] (uint8 or float) ->
  bilinear resize to 299x299 (unless already that size) -> float32 in [-1, 1]."""
  x = images.astype(jnp.float32) / 255.0
  n, h, w, c = x.shape
  if (h, w) != (INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE):
    # Triangle kernel at half-pixel centres without antialiasing = torch's bilinear resize with
    # align_corners=False (edge samples clamp to the border pixel in both).
    x = jax.image.resize(x, (n, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, c), 'bilinear',
                         antialias=False)
  return 2.0 * x - 1.0


def avg_pool_3x3_same(x: jnp.ndarray) -> jnp.ndarray:
  """3x3, stride 1, pad 1 average pool that ignores the padding (TF's 'SAME' average pool)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_same(x: jnp.ndarray) -> jnp.ndarray:
  """3x3, stride 1, pad 1 max pool (padding never wins)."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
  """3x3, stride 2 max pool without padding."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm with running statistics (eps 1e-3) -> ReLU.

  `padding` is (pad_h, pad_w) on both sides, as torch's `Conv2d(padding=...)`.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=(self.strides, self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=PRECISION,
                name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCHNORM_EPSILON, name='bn')(x)
    return nn.relu(x)


def _conv(name: str, features: int, kernel_size, strides: int = 1,
          padding=(0, 0)) -> BasicConv2d:
  """A `BasicConv2d` of the module being built (kernel_size an int: square)."""
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  return BasicConv2d(features, tuple(kernel_size), strides, tuple(padding), name=name)


def _branch3x3dbl(x, strides: int, padding):
  """The 1x1(64) -> 3x3(96) -> 3x3(96, `strides`, `padding`) branch of Mixed_5b-d and 6a."""
  x = _conv('branch3x3dbl_1', 64, 1)(x)
  x = _conv('branch3x3dbl_2', 96, 3, padding=(1, 1))(x)
  return _conv('branch3x3dbl_3', 96, 3, strides=strides, padding=padding)(x)


class FIDInceptionA(nn.Module):
  """Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(no pad count)-1x1 -> 64+64+96+pool."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _conv('branch1x1', 64, 1)(x)
    b5 = _conv('branch5x5_1', 48, 1)(x)
    b5 = _conv('branch5x5_2', 64, 5, padding=(2, 2))(b5)
    b3 = _branch3x3dbl(x, 1, (1, 1))
    bp = _conv('branch_pool', self.pool_features, 1)(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 384+96+C."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv('branch3x3', 384, 3, strides=2)(x)
    bd = _branch3x3dbl(x, 2, (0, 0))
    return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b-e: factorised 7x7 branches (1x7 / 7x1) and an avgpool branch -> 4 x 192 = 768."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = _conv('branch1x1', 192, 1)(x)
    b7 = _conv('branch7x7_1', c7, 1)(x)
    b7 = _conv('branch7x7_2', c7, (1, 7), padding=(0, 3))(b7)
    b7 = _conv('branch7x7_3', 192, (7, 1), padding=(3, 0))(b7)
    bd = _conv('branch7x7dbl_1', c7, 1)(x)
    bd = _conv('branch7x7dbl_2', c7, (7, 1), padding=(3, 0))(bd)
    bd = _conv('branch7x7dbl_3', c7, (1, 7), padding=(0, 3))(bd)
    bd = _conv('branch7x7dbl_4', c7, (7, 1), padding=(3, 0))(bd)
    bd = _conv('branch7x7dbl_5', 192, (1, 7), padding=(0, 3))(bd)
    bp = _conv('branch_pool', 192, 1)(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 320+192+C."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv('branch3x3_1', 192, 1)(x)
    b3 = _conv('branch3x3_2', 320, 3, strides=2)(b3)
    b7 = _conv('branch7x7x3_1', 192, 1)(x)
    b7 = _conv('branch7x7x3_2', 192, (1, 7), padding=(0, 3))(b7)
    b7 = _conv('branch7x7x3_3', 192, (7, 1), padding=(3, 0))(b7)
    b7 = _conv('branch7x7x3_4', 192, 3, strides=2)(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b/7c -> 320 + 2x384 + 2x384 + 192 = 2048 channels.

  `pool` is 'avg' (Mixed_7b, padding excluded from the average) or 'max' (Mixed_7c: the FID graph
  max-pools here, where the Inception-v3 paper average-pools).
  """
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = _conv('branch1x1', 320, 1)(x)
    b3 = _conv('branch3x3_1', 384, 1)(x)
    b3 = jnp.concatenate([_conv('branch3x3_2a', 384, (1, 3), padding=(0, 1))(b3),
                          _conv('branch3x3_2b', 384, (3, 1), padding=(1, 0))(b3)], axis=-1)
    bd = _conv('branch3x3dbl_1', 448, 1)(x)
    bd = _conv('branch3x3dbl_2', 384, 3, padding=(1, 1))(bd)
    bd = jnp.concatenate([_conv('branch3x3dbl_3a', 384, (1, 3), padding=(0, 1))(bd),
                          _conv('branch3x3dbl_3b', 384, (3, 1), padding=(1, 0))(bd)], axis=-1)
    pooled = avg_pool_3x3_same(x) if self.pool == 'avg' else max_pool_3x3_same(x)
    bp = _conv('branch_pool', 192, 1)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID Inception-v3, returning pool3 features and the 1008 class logits.

  Call with images (N, H, W, 3) of any size, values in [0, 255] (uint8 or float). Returns
  `(pool3, logits)`: float32 (N, 2048) features after the global average pool (the FID / KID
  features) and float32 (N, 1008) logits `pool3 @ W + b` (the IS classifier outputs).

  Variables: `params` (convolution kernels HWIO, BatchNorm scale/bias, fc kernel (2048, 1008) and
  bias) and `batch_stats` (BatchNorm running mean/var); `load_inception_params` returns both.
  """

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'InceptionV3 expects (N, H, W, 3) images, got shape {images.shape}; '
                       'repeat grey images to 3 channels first.')
    x = preprocess(images)
    x = _conv('Conv2d_1a_3x3', 32, 3, strides=2)(x)  # 149x149
    x = _conv('Conv2d_2a_3x3', 32, 3)(x)  # 147x147
    x = _conv('Conv2d_2b_3x3', 64, 3, padding=(1, 1))(x)
    x = max_pool_3x3_s2(x)  # 73x73
    x = _conv('Conv2d_3b_1x1', 80, 1)(x)
    x = _conv('Conv2d_4a_3x3', 192, 3)(x)  # 71x71
    x = max_pool_3x3_s2(x)  # 35x35
    x = FIDInceptionA(32, name='Mixed_5b')(x)  # 256
    x = FIDInceptionA(64, name='Mixed_5c')(x)  # 288
    x = FIDInceptionA(64, name='Mixed_5d')(x)  # 288
    x = InceptionB(name='Mixed_6a')(x)  # 17x17x768
    x = FIDInceptionC(128, name='Mixed_6b')(x)
    x = FIDInceptionC(160, name='Mixed_6c')(x)
    x = FIDInceptionC(160, name='Mixed_6d')(x)
    x = FIDInceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)  # 8x8x1280
    x = FIDInceptionE('avg', name='Mixed_7b')(x)  # 2048
    x = FIDInceptionE('max', name='Mixed_7c')(x)  # 2048
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=PRECISION, name='fc')(pool3)
    return pool3, logits


def extract_features(variables: Mapping[str, Any], images_uint8, batch_size: int = 100,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """`InceptionV3` over uint8 (N, H, W, 1 or 3) images, batched by
  `fid_is_kid.extract_features`: NumPy float32 (pool3 (N, 2048), logits (N, 1008))."""
  return fid_is_kid.extract_features(InceptionV3().apply, variables, images_uint8, batch_size,
                                     progress)
