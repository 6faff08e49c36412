"""3x3 'SAME' convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016,
"Fast Algorithms for Convolutional Neural Networks"): the forward pass of the U-Net's
mid-resolution convolutions on CPU outside training (sampling, evaluation).

Each 2x2 block of output pixels is computed from the 4x4 tile of (zero-padded) input around
it. With the 4x4, 4x4 and 2x4 matrices B^T, G and A^T below,

    V = B^T d B    (input tile d, per input channel)
    U = G g G^T    (3x3 kernel g, per input/output channel pair)
    M = V U        (16 matrix products: tiles x C_in times C_in x C_out)
    y = A^T M A    (2x2 output block)

so the multiply-adds go into 16 (tiles x C_in) x (C_in x C_out) matrix products: 16 per 2x2
output block instead of 36, 2.25x fewer. The transforms are additions only (and halvings in
G); each is one elementwise pass (`_transform`).

Results equal the direct convolution to float32 rounding (relative error ~1e-6,
tests/test_winograd.py). `ddpm_jax.models.conv.conv2d` uses it on CPU for the forward pass
of the shapes where it is faster than XLA:CPU's direct convolution (`conv.use_winograd`),
and takes the gradients from the direct convolution. The train step does not use it: there
both this forward pass and a Winograd backward pass (the same algebra transposed) measured
slower per step, although faster layer by layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)

# The 2-D transforms as matrices over row-major flattened tiles: (B^T d B) flattened is
# kron(B^T, B^T) @ d.flatten(), and likewise for G and A^T.
_IN = np.kron(B_T, B_T)      # (16, 16): input tile -> V
_KER = np.kron(G, G)         # (16, 9):  kernel taps -> U
_OUT = np.kron(A_T, A_T)     # (4, 16):  M -> 2x2 output block

# Between the stages: keeps XLA from fusing a transform into the matrix products' library call,
# which ran several times slower.
_barrier = jax.lax.optimization_barrier


def _transform(parts, matrix: np.ndarray):
  """`stack(parts)` (K arrays of one shape) multiplied on the left by the constant (R, K)
  `matrix`: out[r] = sum_k matrix[r, k] * parts[k], shape (R, *parts[0].shape).

  Written as a sum of broadcast products so that XLA emits one elementwise loop for all R
  outputs (stacking R separately computed results costs a pass per result plus a copy).
  Zero columns are skipped."""
  out = None
  for k, part in enumerate(parts):
    column = matrix[:, k]
    if not column.any():
      continue
    term = jnp.asarray(column, part.dtype).reshape((-1,) + (1,) * part.ndim) * part[None]
    out = term if out is None else out + term
  return out


def _input_tiles(x):
  """The 16 (u, v) entries of every 4x4 input tile, each (B, H/2, W/2, C): tile (i, j)
  covers rows 2i-1 .. 2i+2 and columns 2j-1 .. 2j+2 of x (zero outside)."""
  B, H, W, C = x.shape
  T, S = H // 2, W // 2
  xb = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(B, T + 1, 2, S + 1, 2, C)
  return [xb[:, u // 2:u // 2 + T, u % 2, v // 2:v // 2 + S, v % 2]
          for u in range(4) for v in range(4)]


def _to_image(blocks):
  """(4, B, T, S, C) output blocks (entry (p, q) of each 2x2 block) -> (B, 2T, 2S, C)."""
  _, B, T, S, C = blocks.shape
  blocks = blocks.reshape(2, 2, B, T, S, C).transpose(2, 3, 0, 4, 1, 5)   # (B, T, p, S, q, C)
  return blocks.reshape(B, 2 * T, 2 * S, C)


def _batched(V, U):
  """The 16 matrix products of the Winograd domain: (16, tiles, C_in) x (16, C_in, C_out)."""
  return jax.lax.dot_general(V, U, (((2,), (1,)), ((0,), (0,))))


def kernel_transform(w):
  """U = G g G^T for each (C_in, C_out) pair: (3, 3, C_in, C_out) -> (16, C_in, C_out)."""
  return _transform([w[i, j] for i in range(3) for j in range(3)], _KER)


def winograd_conv3x3(x, w):
  """3x3 convolution, stride 1, 'SAME' (zero) padding, NHWC input and HWIO kernel, by
  Winograd F(2x2, 3x3). H and W must be even. Forward only: differentiate through
  `ddpm_jax.models.conv.conv2d` (automatic differentiation of this function works but
  is slow)."""
  if x.shape[1] % 2 or x.shape[2] % 2 or w.shape[:2] != (3, 3):
    raise ValueError(f'winograd_conv3x3 needs even H, W and a 3x3 kernel; got input '
                     f'{x.shape}, kernel {w.shape}.')
  B, H, W, _ = x.shape
  V = _barrier(_transform(_input_tiles(x), _IN))               # (16, B, H/2, W/2, C_in)
  V = V.reshape(16, B * (H // 2) * (W // 2), -1)
  U = _barrier(kernel_transform(w))                            # (16, C_in, C_out)
  M = _barrier(_batched(V, U))                                 # (16, tiles, C_out)
  M = M.reshape(16, B, H // 2, W // 2, -1)
  return _to_image(_transform(list(M), _OUT))
