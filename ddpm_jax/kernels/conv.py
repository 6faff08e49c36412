"""The CPU backend's convolution and dense product (`Ops.conv_general_dilated` and
`Ops.dot_general`, see `ddpm_jax.models.ops`), with the signatures of
`lax.conv_general_dilated` and `lax.dot_general` that `nn.Conv` and `nn.Dense` call.

* `conv_general_dilated`: float32 2-D convolutions with NHWC / HWIO / NHWC dimensions, no
  dilation and no feature groups (every convolution of the U-Net) run through oneDNN
  (`ddpm_jax.kernels.onednn`) where it can be built. Anything else is XLA's.
* `dot_general`: `nn.Dense` over the channels of an NHWC image (the residual blocks'
  shortcut, the attention's projections) as a 1x1 convolution through
  `conv_general_dilated`: oneDNN's 1x1 convolution and its gradients measured faster than
  XLA:CPU's matmul at these shapes (README, "Benchmarks"). Anything else is XLA's.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ddpm_jax.kernels import onednn

_NHWC = ('NHWC', 'HWIO', 'NHWC')


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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, computed as the module docstring says."""
  if (_is_nhwc(lhs, rhs, dimension_numbers) and _plain(lhs_dilation) and _plain(rhs_dilation)
      and feature_group_count == 1 and batch_group_count == 1
      and preferred_element_type is None):
    return _direct(lhs, rhs, tuple(int(s) for s in window_strides), padding)
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
