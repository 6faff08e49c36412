"""The CPU backend's upsampling convolution (`Ops.upsample_conv`, see `ddpm_jax.models.ops`):
the 3x3 'SAME' convolution of a nearest-neighbour x2 upsampled image, computed at the low
resolution as four 2x2 phase convolutions, in 4/9 of the multiply-adds.

Output pixel (2i + a, 2j + b) of the 3x3 convolution of the upsampled image only sees input
pixels of rows {i - 1, i} (a = 0) or {i, i + 1} (a = 1), and likewise for columns; the taps
that land on the same input pixel add up. So each of the four output phases (a, b) is a 2x2
'VALID' convolution of x, padded by one row and column on the side it reaches out to, with a
kernel of summed 3x3 taps:

    rows for a = 0: [w0, w1 + w2],   a = 1: [w0 + w1, w2]   (the same for columns and b).

The phases are then interleaved. Equal to upsample-then-convolve up to float rounding
(tests/test_kernels.py).
"""

from __future__ import annotations

import jax.numpy as jnp

from ddpm_jax.kernels import conv


def nearest_x2(x):
  """Nearest-neighbour x2 upsampling of an NHWC image."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _fold_taps(w, axis: int, phase: int):
  """The 3 taps of `w` along `axis` folded into the 2 that output phase `phase` sees:
  [w0, w1 + w2] for phase 0, [w0 + w1, w2] for phase 1."""
  t0, t1, t2 = (jnp.take(w, i, axis=axis) for i in range(3))
  return jnp.stack((t0, t1 + t2) if phase == 0 else (t0 + t1, t2), axis=axis)


def _is_3x3_same(w_shape, strides, padding) -> bool:
  return tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and padding == 'SAME'


def upsample_conv(lhs, rhs, window_strides, padding, **kwargs):
  """`conv.conv_general_dilated(nearest_x2(lhs), rhs, window_strides, padding, **kwargs)`,
  by phases for 3x3 stride-1 'SAME' convolutions in NHWC / HWIO (`nn.Conv`'s)."""
  plain = all(kwargs.get(k) in (None, 1, (1, 1)) for k in ('lhs_dilation', 'rhs_dilation',
                                                             'feature_group_count',
                                                             'batch_group_count'))
  if not (plain and conv._is_nhwc(lhs, rhs, kwargs.get('dimension_numbers'))
          and _is_3x3_same(rhs.shape, tuple(window_strides), padding)):
    return conv.conv_general_dilated(nearest_x2(lhs), rhs, window_strides, padding, **kwargs)
  B, H, W, _ = lhs.shape
  phases = []
  for a in (0, 1):
    for b in (0, 1):
      xp = jnp.pad(lhs, ((0, 0), (1 - a, a), (1 - b, b), (0, 0)))
      phases.append(conv._direct(xp, _fold_taps(_fold_taps(rhs, 0, a), 1, b), (1, 1),
                                 'VALID'))
  out = jnp.stack(phases, axis=3).reshape(B, H, W, 2, 2, -1)   # (B, H, W, a, b, C)
  return out.transpose(0, 1, 3, 2, 4, 5).reshape(B, 2 * H, 2 * W, -1)
