"""Building blocks of the DDPM U-Net (Ho et al. 2020, appendix B).

These follow the paper's TensorFlow code (`diffusion_tf/models/unet.py` and
`diffusion_tf/nn.py`):

* `timestep_embedding`: the Transformer sinusoidal embedding of the timestep.
* `ResnetBlock`: GroupNorm -> swish -> conv3x3, plus a projection of the timestep
  embedding, then GroupNorm -> swish -> dropout -> conv3x3 (zero-initialised), with a
  1x1 ("network-in-network") shortcut when the channel count changes.
* `AttnBlock`: single-head self-attention over all H*W positions, with a
  zero-initialised output projection and a residual connection.
* `Downsample` / `Upsample`: stride-2 3x3 conv (or 2x2 average pool) and nearest-neighbour
  x2 followed by a 3x3 conv.

Parameters are always float32; `dtype` is the compute dtype. GroupNorm and the attention
softmax are always computed in float32.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models.conv import conv2d
from ddpm_jax.models.group_norm import group_norm

Dtype = Any

# The paper's `default_init(scale=1.)`: variance scaling, fan_avg, uniform.
default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
# The paper uses `init_scale=0.` (i.e. a 1e-10 variance scale); we use exact zeros.
zero_init = nn.initializers.zeros
GROUPNORM_EPSILON = 1e-6


def timestep_embedding(t: jnp.ndarray, dim: int) -> jnp.ndarray:
  """Sinusoidal timestep embedding, as in the paper's `nn.get_timestep_embedding`.

  With `half = dim // 2` and `freq_k = exp(-log(10000) * k / (half - 1))` for
  k = 0 .. half-1, the embedding is `concat([sin(t * freq), cos(t * freq)])`.
  For an odd `dim` a zero column is appended.

  Args:
    t: integer (or float) timesteps, shape (B,).
    dim: embedding width; must be >= 4 (so that `half - 1 > 0`).

  Returns:
    float32 array of shape (B, dim).
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


class _GroupNormParams(nn.Module):
  """The per-channel `scale` (ones) and `bias` (zeros) of a GroupNorm, under the same names
  and shapes as `flax.linen.GroupNorm`'s, so checkpoints are interchangeable."""

  @nn.compact
  def __call__(self, channels: int):
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    return scale, bias


class Normalize(nn.Module):
  """GroupNorm(num_groups, eps=1e-6) computed in float32, optionally followed by swish and
  (with `train=True`) dropout, all in one fused function with a hand-written backward pass
  (`ddpm_jax.models.group_norm`).

  The result is cast to the compute `dtype`.
  """
  num_groups: int
  swish: bool = True
  dtype: Dtype = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    scale, bias = _GroupNormParams(name='group_norm')(x.shape[-1])
    rate, key = 0.0, None
    if train and self.dropout > 0:
      rate, key = self.dropout, self.make_rng('dropout')
    h = group_norm(x.astype(jnp.float32), scale, bias, self.num_groups, GROUPNORM_EPSILON,
                   self.swish, rate, key)
    return h.astype(self.dtype)


def _kernel_and_bias(module: nn.Module, kernel_shape: tuple, zero: bool = False):
  """Declare, in `module`, a `kernel` of `kernel_shape` (the paper's `default_init`, or zeros)
  and a zero `bias` of its last dimension: the names, shapes and initialisers of
  `flax.linen.Dense` / `flax.linen.Conv` under `nin` / `conv3x3`, so checkpoints are the
  same for layers computed another way."""
  kernel = module.param('kernel', zero_init if zero else default_init, tuple(kernel_shape),
                        jnp.float32)
  bias = module.param('bias', zero_init, (kernel_shape[-1],), jnp.float32)
  return kernel, bias


class Conv3x3(nn.Module):
  """3x3 convolution with TF-style 'SAME' padding and the paper's initialisers, computed by
  `conv2d` (outside training, by Winograd's algorithm on CPU where that is faster).
  Parameters as `flax.linen.Conv`'s (`kernel` (3, 3, C_in, features), `bias`), so
  checkpoints are interchangeable."""
  features: int
  dtype: Dtype = jnp.float32
  zero: bool = False
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    kernel, bias = _kernel_and_bias(self, (3, 3, x.shape[-1], self.features), self.zero)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), (self.strides,) * 2, 'SAME',
               allow_winograd=not train)
    return y + bias.astype(self.dtype)


def conv3x3(features: int, dtype: Dtype, name: str, zero: bool = False,
            strides: int = 1) -> Conv3x3:
  """3x3 convolution with TF-style 'SAME' padding and the paper's initialisers."""
  return Conv3x3(features, dtype, zero, strides, name=name)


def pointwise(x, kernel, bias, dtype: Dtype):
  """x @ kernel + bias over the channels (last axis) in `dtype`: on images (NHWC) as a 1x1
  convolution, on vectors as a matmul (see `Nin`)."""
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  y = conv2d(x, kernel[None, None], (1, 1), 'VALID') if x.ndim == 4 else x @ kernel
  return y + bias.astype(dtype)


class Nin(nn.Module):
  """1x1 convolution ("network in network", `nn.nin` in the paper) with `flax.linen.Dense`'s
  parameters (`kernel` (C_in, features), `bias`). On images (NHWC) it runs as a 1x1
  convolution, on vectors as a matmul: XLA:CPU computes a 1x1 convolution and its gradients
  faster than the same matmul (train step of the CIFAR-10 model at batch 8: 5 % faster;
  forward + backward of 8x16x16x256 -> 768 17.4 -> 14.7 ms, 8x32x32x256 -> 128 15.1 ->
  11.2 ms)."""
  features: int
  dtype: Dtype = jnp.float32
  zero: bool = False

  @nn.compact
  def __call__(self, x):
    kernel, bias = _kernel_and_bias(self, (x.shape[-1], self.features), self.zero)
    return pointwise(x, kernel, bias, self.dtype)


def nin(features: int, dtype: Dtype, name: str, zero: bool = False) -> Nin:
  """1x1 convolution ("network in network", `nn.nin` in the paper) on channels."""
  return Nin(features, dtype, zero, name=name)


class ResnetBlock(nn.Module):
  """Residual block with timestep conditioning (paper's `resnet_block`).

  h = conv1(swish(norm1(x)))
  h += temb_proj(swish(temb))[:, None, None, :]
  h = conv2(dropout(swish(norm2(h))))       # conv2 zero-initialised; norm, swish and
                                            # dropout fused (`Normalize`)
  return nin_shortcut(x) + h                # shortcut only when in_ch != out_ch
  """
  out_ch: int
  num_groups: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):  # `train` positional for nn.remat.
    h = Normalize(self.num_groups, dtype=self.dtype, name='norm1')(x)
    h = conv3x3(self.out_ch, self.dtype, 'conv1')(h, train)
    h = h + nin(self.out_ch, self.dtype, 'temb_proj')(nn.swish(temb))[:, None, None, :]
    h = Normalize(self.num_groups, dtype=self.dtype, dropout=self.dropout,
                  name='norm2')(h, train)
    h = conv3x3(self.out_ch, self.dtype, 'conv2', zero=True)(h, train)
    if x.shape[-1] != self.out_ch:
      x = nin(self.out_ch, self.dtype, 'nin_shortcut')(x)
    return x + h


class _KernelAndBias(nn.Module):
  """`_kernel_and_bias` as a submodule of its own (the attention block's joint q/k/v matmul,
  `upsample_conv`)."""
  kernel_shape: tuple

  @nn.compact
  def __call__(self):
    return _kernel_and_bias(self, self.kernel_shape)


class AttnBlock(nn.Module):
  """Single-head self-attention over all spatial positions (paper's `attn_block`).

  q, k, v = 1x1 projections of GroupNorm(x); w = softmax(q k^T / sqrt(C)) over the H*W
  key positions; out = proj_out(w v) with proj_out zero-initialised; return x + out.
  The q, k and v projections keep their own parameters (`q`, `k`, `v`) but run as one
  C -> 3C 1x1 convolution (see `Nin`): fewer, larger products in the forward and backward
  passes.
  """
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    h = Normalize(self.num_groups, swish=False, dtype=self.dtype, name='norm')(x)
    (wq, bq), (wk, bk), (wv, bv) = (_KernelAndBias((C, C), name=n)() for n in 'qkv')
    qkv = pointwise(h, jnp.concatenate([wq, wk, wv], axis=1), jnp.concatenate([bq, bk, bv]),
                    self.dtype).reshape(B, H * W, 3 * C)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    logits = jnp.einsum('bic,bjc->bij', q, k, preferred_element_type=jnp.float32)
    w = nn.softmax(logits * (C ** -0.5), axis=-1)
    h = jnp.einsum('bij,bjc->bic', w.astype(self.dtype), v).reshape(B, H, W, C)
    h = nin(C, self.dtype, 'proj_out', zero=True)(h)
    return x + h


class Downsample(nn.Module):
  """Halve the resolution: 3x3 conv with stride 2 ('SAME' padding), or 2x2 average pool."""
  with_conv: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.with_conv:
      return conv3x3(x.shape[-1], self.dtype, 'conv', strides=2)(x)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding='SAME')


def _fold_taps(w, axis: int, phase: int):
  """The 3 taps of `w` along `axis` folded into the 2 that output phase `phase` sees:
  [w0, w1 + w2] for phase 0, [w0 + w1, w2] for phase 1 (see `upsample_conv`)."""
  t0, t1, t2 = (jnp.take(w, i, axis=axis) for i in range(3))
  return jnp.stack((t0, t1 + t2) if phase == 0 else (t0 + t1, t2), axis=axis)


def upsample_conv(x, kernel, bias):
  """conv3x3(nearest-neighbour x2 upsampling of x), 'SAME' padding, computed at the low
  resolution in 4/9 of the multiply-adds.

  Output pixel (2i + a, 2j + b) of the 3x3 convolution of the upsampled image only sees
  input pixels of rows {i - 1, i} (a = 0) or {i, i + 1} (a = 1), and likewise for columns; the
  taps that land on the same input pixel add up. So each of the four output phases (a, b) is
  a 2x2 'VALID' convolution of x, padded by one row and column on the side it reaches out to,
  with a kernel of summed 3x3 taps:
      rows for a = 0: [w0, w1 + w2],   a = 1: [w0 + w1, w2]   (the same for columns and b).
  The phases are then interleaved. Equal to upsample-then-convolve up to float rounding
  (tests/test_unet.py).
  """
  B, H, W, _ = x.shape
  w = kernel.astype(x.dtype)
  phases = []
  for a in (0, 1):
    for b in (0, 1):
      xp = jnp.pad(x, ((0, 0), (1 - a, a), (1 - b, b), (0, 0)))
      phases.append(conv2d(xp, _fold_taps(_fold_taps(w, 0, a), 1, b), (1, 1), 'VALID'))
  out = jnp.stack(phases, axis=3).reshape(B, H, W, 2, 2, -1)   # (B, H, W, a, b, C)
  out = out.transpose(0, 1, 3, 2, 4, 5).reshape(B, 2 * H, 2 * W, -1)
  return out + bias.astype(x.dtype)


class Upsample(nn.Module):
  """Double the resolution: nearest-neighbour x2, then (optionally) a 3x3 conv (computed at
  the low resolution, `upsample_conv`; parameters as `conv3x3`'s, under `conv`)."""
  with_conv: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.with_conv:
      C = x.shape[-1]
      kernel, bias = _KernelAndBias((3, 3, C, C), name='conv')()
      return upsample_conv(x.astype(self.dtype), kernel, bias)
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
