"""Building blocks of the DDPM U-Net (Ho et al. 2020, appendix B), in stock Flax layers:
`timestep_embedding`, `ResnetBlock`, `AttnBlock`, `Downsample`, `Upsample`.

They follow the paper's TensorFlow code (`diffusion_tf/models/unet.py`, `diffusion_tf/nn.py`)
and read side by side with score_sde's `models/ddpm.py`. Parameters are always float32;
`dtype` is the compute dtype. GroupNorm and the attention softmax are always computed in
float32. Every block takes `ops`, the functions it computes with (`ddpm_jax.models.ops`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models.ops import XLA, Ops

Dtype = Any

# The paper's `default_init(scale=1.)`: variance scaling, fan_avg, uniform.
default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
# The paper uses `init_scale=0.` (i.e. a 1e-10 variance scale); we use exact zeros.
zero_init = nn.initializers.zeros
GROUPNORM_EPSILON = 1e-6


def timestep_embedding(t: jnp.ndarray, dim: int) -> jnp.ndarray:
  """The Transformer's sinusoidal embedding of timesteps `t` (B,), float32 (B, dim), as in
  the paper's `nn.get_timestep_embedding`.

  With `half = dim // 2` and `freq_k = exp(-log(10000) * k / (half - 1))` for
  k = 0 .. half-1, the embedding is `concat([sin(t * freq), cos(t * freq)])`.
  For an odd `dim` a zero column is appended; `dim` >= 4 (so that `half - 1 > 0`).
  """
  if dim < 4:
    raise ValueError(f'timestep_embedding needs dim >= 4, got {dim}.')
  t = jnp.asarray(t)
  if t.ndim != 1:
    raise ValueError(f'timestep_embedding expects timesteps of shape (B,), got {t.shape}.')
  half = dim // 2
  freq = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = t.astype(jnp.float32)[:, None] * freq[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def conv3x3(features: int, dtype: Dtype, ops: Ops, name: str, zero: bool = False,
            strides: int = 1, conv_general_dilated=None) -> nn.Conv:
  """The paper's `nn.conv2d` with a 3x3 kernel: TF-style 'SAME' padding, `default_init` (or
  zeros for the zero-initialised layers)."""
  return nn.Conv(features, (3, 3), strides=strides, padding='SAME', dtype=dtype,
                 kernel_init=zero_init if zero else default_init,
                 conv_general_dilated=conv_general_dilated or ops.conv_general_dilated,
                 name=name)


def dense(features: int, dtype: Dtype, ops: Ops, name: str, zero: bool = False) -> nn.Dense:
  """The paper's `nn.dense` and `nn.nin` (a 1x1 convolution is a dense layer over the
  channels): `default_init`, or zeros."""
  return nn.Dense(features, dtype=dtype, kernel_init=zero_init if zero else default_init,
                  dot_general=ops.dot_general, name=name)


class _GroupNormParams(nn.Module):
  """`nn.GroupNorm`'s parameters (`scale` ones, `bias` zeros, (C,)) for a backend's own
  GroupNorm function."""

  @nn.compact
  def __call__(self, channels: int):
    return (self.param('scale', nn.initializers.ones, (channels,), jnp.float32),
            self.param('bias', nn.initializers.zeros, (channels,), jnp.float32))


class Normalize(nn.Module):
  """GroupNorm(num_groups, eps=1e-6) in float32 (the paper's `normalize`), then swish unless
  `swish=False`, then dropout at rate `dropout` when `train`; the result in `dtype`.

  The variance is computed from x - mean, as the paper's `tf.nn.moments` does. A backend's
  `ops.group_norm` computes all three in one function, with the same parameters and mask.
  """
  num_groups: int
  swish: bool = True
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  ops: Ops = XLA

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(jnp.float32)
    rate = self.dropout if train else 0.0
    key = self.make_rng('dropout') if rate > 0 else None
    if self.ops.group_norm is not None:
      scale, bias = _GroupNormParams(name='group_norm')(x.shape[-1])
      h = self.ops.group_norm(x, scale, bias, self.num_groups, GROUPNORM_EPSILON, self.swish,
                              rate, key)
    else:
      h = nn.GroupNorm(self.num_groups, epsilon=GROUPNORM_EPSILON, use_fast_variance=False,
                       name='group_norm')(x)
      h = nn.swish(h) if self.swish else h
      h = nn.Dropout(rate)(h, deterministic=rate == 0, rng=key)
    return h.astype(self.dtype)


class ResnetBlock(nn.Module):
  """Residual block with timestep conditioning (the paper's `resnet_block`).

  h = conv1(swish(norm1(x)))
  h += temb_proj(swish(temb))[:, None, None, :]
  h = conv2(dropout(swish(norm2(h))))       # conv2 zero-initialised
  return nin_shortcut(x) + h                # shortcut only when in_ch != out_ch
  """
  out_ch: int
  num_groups: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  ops: Ops = XLA

  @nn.compact
  def __call__(self, x, temb, train: bool):  # `train` positional for nn.remat.
    dtype, ops = self.dtype, self.ops
    h = Normalize(self.num_groups, dtype=dtype, ops=ops, name='norm1')(x)
    h = conv3x3(self.out_ch, dtype, ops, 'conv1')(h)
    h = h + dense(self.out_ch, dtype, ops, 'temb_proj')(nn.swish(temb))[:, None, None, :]
    h = Normalize(self.num_groups, dropout=self.dropout, dtype=dtype, ops=ops,
                  name='norm2')(h, train)
    h = conv3x3(self.out_ch, dtype, ops, 'conv2', zero=True)(h)
    if x.shape[-1] != self.out_ch:
      x = dense(self.out_ch, dtype, ops, 'nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all spatial positions (the paper's `attn_block`).

  q, k, v = 1x1 projections of GroupNorm(x); w = softmax(q k^T / sqrt(C)) over the H*W
  key positions (logits and softmax in float32); out = proj_out(w v) with proj_out
  zero-initialised; return x + out.
  """
  num_groups: int
  dtype: Dtype = jnp.float32
  ops: Ops = XLA

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    dtype, ops = self.dtype, self.ops
    h = Normalize(self.num_groups, swish=False, dtype=dtype, ops=ops, name='norm')(x)
    q, k, v = (dense(C, dtype, ops, n)(h).reshape(B, H * W, 1, C) for n in 'qkv')
    attention = ops.dot_product_attention or jax.nn.dot_product_attention
    h = attention(q, k, v).reshape(B, H, W, C)
    h = dense(C, dtype, ops, 'proj_out', zero=True)(h)
    return x + h


class _Resampling(nn.Module):
  """The fields of `Downsample` and `Upsample`: convolutional resampling or not."""
  with_conv: bool = True
  dtype: Dtype = jnp.float32
  ops: Ops = XLA


class Downsample(_Resampling):
  """Halve the resolution: 3x3 conv with stride 2 ('SAME' padding), or 2x2 average pool."""

  @nn.compact
  def __call__(self, x):
    if self.with_conv:
      return conv3x3(x.shape[-1], self.dtype, self.ops, 'conv', strides=2)(x)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding='SAME')


class Upsample(_Resampling):
  """Double the resolution: nearest-neighbour x2, then (optionally) a 3x3 conv."""

  @nn.compact
  def __call__(self, x):
    if self.with_conv and self.ops.upsample_conv is not None:
      # The same convolution, which the backend computes from x at the low resolution.
      return conv3x3(x.shape[-1], self.dtype, self.ops, 'conv',
                     conv_general_dilated=self.ops.upsample_conv)(x)
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      x = conv3x3(x.shape[-1], self.dtype, self.ops, 'conv')(x)
    return x
