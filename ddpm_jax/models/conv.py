"""The U-Net's 2-D convolution (NHWC input, HWIO kernel): the direct convolution, or, on CPU
for the shapes where it is faster, Winograd F(2x2, 3x3) (`ddpm_jax.models.winograd`) in the
forward pass with the direct convolution's gradients, or, for the output convolution's few
channels, one 1x1 convolution to all nine taps followed by a sum of shifted slices.

The direct convolution is oneDNN's (`ddpm_jax.models.onednn_conv`) on a single CPU device in
float32 where it is available, XLA's otherwise.
"""

import jax
import jax.numpy as jnp

from ddpm_jax.models import onednn_conv
from ddpm_jax.models.winograd import winograd_conv3x3


# Winograd's transformed input (4x the input) must stay within this many bytes: up to 12 MiB
# it measured 20-36 % faster than XLA:CPU's direct convolution in every case tried, from
# 16 MiB on it was as often slower (its 16 matrix products stream from memory).
WINOGRAD_MAX_BYTES = 12 * 2**20
# ... and each of its 16 (tiles x C_in) x (C_in x C_out) matrix products must be worth at least
# this many FLOPs, with at least 128 channels on either side: below that the transforms
# cost more than the multiplications saved (8x8x128 -> 128 at batch 8: 1.0 -> 1.2 ms; the
# quickstart model's 32- and 64-channel convolutions: up to 1.6x slower).
WINOGRAD_MIN_FLOPS = 8e6
WINOGRAD_MIN_CHANNELS = 128


def _is_3x3_same(w_shape, strides, padding) -> bool:
  """A 3x3 kernel, stride 1, 'SAME' padding: the convolutions with another algorithm here."""
  return tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and padding == 'SAME'


def use_winograd(x_shape, w_shape, strides, padding, platform: str, itemsize: int = 4) -> bool:
  """Whether `conv2d` runs this convolution's forward pass by Winograd F(2x2, 3x3): on CPU,
  for 3x3 stride-1 'SAME' convolutions of even-sized images of at least 8x8, with at least
  `WINOGRAD_MIN_CHANNELS` input and output channels, whose transformed input (4x the input,
  `itemsize` bytes per value) fits in `WINOGRAD_MAX_BYTES` and whose Winograd-domain matrix
  products are worth at least `WINOGRAD_MIN_FLOPS` each. Measured on the 2-core benchmark
  machine, forward pass at batch 8: 16x16x256 -> 256 12.6 -> 9.0 ms, 16x16x384 -> 256 19.3 ->
  12.9 ms, 8x8x512 -> 256 6.9 -> 5.4 ms; but 32x32x128 -> 128 (16 MiB transformed) 13.7 ->
  18.1 ms, and 4x4 images 1.2 -> 1.7 ms. Accelerators keep their own convolution
  algorithms."""
  B, H, W, c_in = x_shape
  c_out = w_shape[-1]
  tiles = B * (H // 2) * (W // 2)
  return (platform == 'cpu' and _is_3x3_same(w_shape, strides, padding)
          and H % 2 == 0 and W % 2 == 0 and H >= 8 and W >= 8
          and min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS
          and 2 * tiles * c_in * c_out >= WINOGRAD_MIN_FLOPS
          and 16 * tiles * c_in * itemsize <= WINOGRAD_MAX_BYTES)


# At most this many output channels: a 3x3 'SAME' convolution runs as a 1x1 convolution to
# 9 * C_out channels (one per tap) and a sum of nine shifted slices of its output. XLA:CPU's
# direct convolution's forward pass is slow with so few output channels: the CIFAR-10 model's
# output convolution (8x32x32x128 -> 3) 2.7 -> 0.46 ms, the quickstart model's (32x32x32 -> 1
# at batch 250) 9.0 -> 3.0 ms. Gradients stay the direct convolution's.
SHIFT_SUM_MAX_OUT = 4


def use_shift_sum(x_shape, w_shape, strides, padding, platform: str) -> bool:
  """Whether `conv2d` computes this convolution by `shift_sum_conv3x3`: on CPU, 3x3 stride-1
  'SAME' convolutions with at most `SHIFT_SUM_MAX_OUT` output channels."""
  return (platform == 'cpu' and _is_3x3_same(w_shape, strides, padding)
          and w_shape[-1] <= SHIFT_SUM_MAX_OUT)


def shift_sum_conv3x3(x, w):
  """3x3 'SAME' convolution as y[h, w] = sum over taps (i, j) of z[h + i - 1, w + j - 1, (i, j)]
  with z = x @ w[i, j] for all nine taps at once (a 1x1 convolution to 9 * C_out channels,
  zero outside the image). Equal to the direct convolution up to float rounding. Its
  gradients, through these operations, can be slower than the direct convolution's
  (32x32x32 -> 1 at batch 250: 38 -> 61 ms backward), so `conv2d` takes the latter's."""
  B, H, W, c_in = x.shape
  c_out = w.shape[-1]
  taps = jnp.transpose(w, (2, 0, 1, 3)).reshape(1, 1, c_in, 9 * c_out)
  z = _direct(x, taps, (1, 1), 'VALID').reshape(B, H, W, 3, 3, c_out)
  z = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
  return sum(z[:, i:i + H, j:j + W, i, j] for i in range(3) for j in range(3))


def use_onednn(dtype, platform: str, device_count: int) -> bool:
  """Whether the direct convolution is oneDNN's: float32 on a single CPU device (XLA cannot
  split its custom call across devices), when `onednn_conv.available()`."""
  return (platform == 'cpu' and jnp.dtype(dtype) == jnp.float32 and device_count == 1
          and onednn_conv.available())


def _direct(x, w, strides, padding):
  if use_onednn(x.dtype, jax.default_backend(), jax.device_count()):
    return onednn_conv.conv2d(x, w, strides, padding)
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv2d(x: jnp.ndarray, w: jnp.ndarray, strides=(1, 1), padding='SAME',
           allow_winograd: bool = True) -> jnp.ndarray:
  """`jax.lax.conv_general_dilated(x, w, strides, padding)` with NHWC / HWIO / NHWC
  dimensions, by the direct convolution (`_direct`: oneDNN's where `use_onednn`, else XLA's),
  except:
  * with `allow_winograd` and XLA's direct convolution, for the shapes of `use_winograd`, the
    forward pass is Winograd's (equal to float32 rounding), the gradients the direct
    convolution's. The U-Net allows it outside training only: inside the train step it
    measured 3-4 % slower per step (two sessions), although faster layer by layer. Against
    oneDNN's direct convolution it loses: the CIFAR-10 forward pass at batch 8 is 3 % faster
    with oneDNN's convolutions alone than with Winograd's where it applies (paired, 30 calls).
  * for the shapes of `use_shift_sum` (the output convolution), in training too, the forward
    pass is `shift_sum_conv3x3`'s, the gradients again the direct convolution's.
  `padding` is a string or a sequence of (low, high) pairs."""
  strides = tuple(strides)
  onednn = use_onednn(x.dtype, jax.default_backend(), jax.device_count())
  if allow_winograd and not onednn and use_winograd(
      x.shape, w.shape, strides, padding, jax.default_backend(), jnp.dtype(x.dtype).itemsize):
    return _winograd_forward_conv3x3(x, w)
  if use_shift_sum(x.shape, w.shape, strides, padding, jax.default_backend()):
    return _shift_sum_forward_conv3x3(x, w)
  return _direct(x, w, strides, padding)


def _forward_by(forward):
  """A 3x3 'SAME' convolution whose forward pass is `forward(x, w)` (the same function computed
  another way) and whose gradients are the direct convolution's."""

  @jax.custom_vjp
  def conv3x3(x, w):
    return forward(x, w)

  def conv3x3_fwd(x, w):
    return forward(x, w), (x, w)

  def conv3x3_bwd(residuals, dy):
    x, w = residuals
    return jax.vjp(lambda x, w: _direct(x, w, (1, 1), 'SAME'), x, w)[1](dy)

  conv3x3.defvjp(conv3x3_fwd, conv3x3_bwd)
  return conv3x3


_winograd_forward_conv3x3 = _forward_by(winograd_conv3x3)
_shift_sum_forward_conv3x3 = _forward_by(shift_sum_conv3x3)
