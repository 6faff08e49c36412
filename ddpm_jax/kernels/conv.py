"""The CPU backend's convolution and dense product (`Ops.conv_general_dilated` and
`Ops.dot_general`, see `ddpm_jax.models.ops`), with the signatures of
`lax.conv_general_dilated` and `lax.dot_general` that `nn.Conv` and `nn.Dense` call.

* `conv_general_dilated`: float32 2-D convolutions with NHWC / HWIO / NHWC dimensions, no
  dilation and no feature groups (every convolution of the U-Net) run through oneDNN
  (`ddpm_jax.kernels.onednn`, where it can be built; else XLA's); 3x3 'SAME' ones to at most `SHIFT_SUM_MAX_OUT` channels (the
  output convolution) compute their forward pass as a 1x1 convolution to all nine taps and a
  sum of shifted slices (`shift_sum_conv3x3`). Anything else is XLA's.
* `dot_general`: `nn.Dense` over the channels of an NHWC image (the residual blocks'
  shortcut, the attention's projections) as a 1x1 convolution through
  `conv_general_dilated`; anything else is XLA's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ddpm_jax.kernels import onednn

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# At most this many output channels: a 3x3 'SAME' convolution runs as a 1x1 convolution to
# 9 * C_out channels (one per tap) and a sum of nine shifted slices of its output, gradients
# the direct convolution's. The CIFAR-10 model's output convolution (8x32x32x128 -> 3).
SHIFT_SUM_MAX_OUT = 4


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
  """Whether the dimensions are NHWC / HWIO / NHWC (`nn.Conv`'s on images)."""
  return (lhs.ndim == 4 and rhs.ndim == 4 and dimension_numbers is not None
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def _plain(v) -> bool:
  """No dilation: None or all ones."""
  return v is None or all(int(d) == 1 for d in v)


def _xla(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def _direct(x, w, strides, padding):
  """oneDNN's convolution for float32 where it is `available()`, XLA's otherwise."""
  if x.dtype == jnp.float32 and w.dtype == jnp.float32 and onednn.available():
    return onednn.conv2d(x, w, strides, padding)
  return _xla(x, w, strides, padding)


def _is_3x3_same(w_shape, strides, padding) -> bool:
  return tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and padding == 'SAME'


def shift_sum_conv3x3(x, w):
  """3x3 'SAME' convolution as y[h, w] = sum over taps (i, j) of z[h + i - 1, w + j - 1, (i, j)]
  with z = x @ w[i, j] for all nine taps at once (a 1x1 convolution to 9 * C_out channels,
  zero outside the image). Equal to the direct convolution up to float rounding."""
  B, H, W, c_in = x.shape
  c_out = w.shape[-1]
  taps = jnp.transpose(w, (2, 0, 1, 3)).reshape(1, 1, c_in, 9 * c_out)
  z = _direct(x, taps, (1, 1), 'VALID').reshape(B, H, W, 3, 3, c_out)
  z = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
  return sum(z[:, i:i + H, j:j + W, i, j] for i in range(3) for j in range(3))


@jax.custom_vjp
def _shift_sum_forward(x, w):
  """`shift_sum_conv3x3` forward, the direct convolution's gradients (through the shifted
  slices they are slower)."""
  return shift_sum_conv3x3(x, w)


def _shift_sum_fwd(x, w):
  return shift_sum_conv3x3(x, w), (x, w)


def _shift_sum_bwd(residuals, dy):
  x, w = residuals
  return jax.vjp(lambda x, w: _direct(x, w, (1, 1), 'SAME'), x, w)[1](dy)


_shift_sum_forward.defvjp(_shift_sum_fwd, _shift_sum_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, computed as the module docstring says."""
  if (_is_nhwc(lhs, rhs, dimension_numbers) and _plain(lhs_dilation) and _plain(rhs_dilation)
      and feature_group_count == 1 and batch_group_count == 1
      and preferred_element_type is None):
    strides = tuple(int(s) for s in window_strides)
    if lhs.dtype == jnp.float32 and _is_3x3_same(rhs.shape, strides, padding) and (
        rhs.shape[-1] <= SHIFT_SUM_MAX_OUT):
      return _shift_sum_forward(lhs, rhs)
    return _direct(lhs, rhs, strides, padding)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  batch_group_count, precision, preferred_element_type)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                **kwargs):
  """`lax.dot_general`; `nn.Dense` on an NHWC image as a 1x1 convolution."""
  (contract_l, contract_r), (batch_l, batch_r) = dimension_numbers
  if (lhs.ndim == 4 and rhs.ndim == 2 and tuple(contract_l) == (3,)
      and tuple(contract_r) == (0,) and not batch_l and not batch_r
      and preferred_element_type is None and not kwargs):
    return conv_general_dilated(lhs, rhs[None, None], (1, 1), 'VALID',
                                dimension_numbers=_NHWC)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type, **kwargs)
