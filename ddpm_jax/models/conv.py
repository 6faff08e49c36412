"""The U-Net's 2-D convolution (NHWC input, HWIO kernel): XLA's direct convolution, or, on CPU
for the shapes where it is faster, Winograd F(2x2, 3x3) (`ddpm_jax.models.winograd`) in the
forward pass with the direct convolution's gradients.
"""

import jax
import jax.numpy as jnp

from ddpm_jax.models.winograd import winograd_conv3x3


def use_winograd(x_shape, w_shape, strides, padding, platform: str) -> bool:
  """Whether `conv2d` runs this convolution's forward pass by Winograd F(2x2, 3x3): on CPU,
  for 3x3 stride-1 'SAME' convolutions of 8x8 to 16x16 (even) images with at most 256 input
  channels -- where it measured faster than XLA:CPU's direct convolution on the 2-core
  benchmark machine (8x16x16x256 -> 256: 11.8 -> 7.9 ms; 8x8x8x256 -> 256: 3.1 -> 2.2 ms;
  the CIFAR-10 forward pass 544 -> 514 ms). At 32x32 and with 512 input channels its 16 small
  matrix products run too far below the matrix-multiply peak to pay for the transforms.
  Accelerators keep their own convolution algorithms."""
  _, H, W, C = x_shape
  return (platform == 'cpu' and tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
          and padding == 'SAME' and H % 2 == 0 and W % 2 == 0 and 8 <= H <= 16
          and 8 <= W <= 16 and C <= 256)


def _direct(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv2d(x: jnp.ndarray, w: jnp.ndarray, strides=(1, 1), padding='SAME') -> jnp.ndarray:
  """`jax.lax.conv_general_dilated(x, w, strides, padding)` with NHWC / HWIO / NHWC
  dimensions. For the shapes of `use_winograd` (on the default backend) the forward pass is
  Winograd's (equal to float32 rounding); gradients are always the direct convolution's.
  `padding` is a string or a sequence of (low, high) pairs."""
  strides = tuple(strides)
  if use_winograd(x.shape, w.shape, strides, padding, jax.default_backend()):
    return _winograd_forward_conv3x3(x, w)
  return _direct(x, w, strides, padding)


@jax.custom_vjp
def _winograd_forward_conv3x3(x, w):
  """3x3 'SAME' convolution: forward pass by Winograd, backward pass by the direct
  convolution (whose gradients are the same function's)."""
  return winograd_conv3x3(x, w)


def _winograd_forward_fwd(x, w):
  return winograd_conv3x3(x, w), (x, w)


def _winograd_forward_bwd(residuals, dy):
  x, w = residuals
  return jax.vjp(lambda x, w: _direct(x, w, (1, 1), 'SAME'), x, w)[1](dy)


_winograd_forward_conv3x3.defvjp(_winograd_forward_fwd, _winograd_forward_bwd)
