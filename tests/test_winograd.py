"""Tests for Winograd F(2x2, 3x3) convolution (`ddpm_jax.models.winograd`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.models import winograd


def direct(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def random_pair(shape, c_out, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(0.2 * rng.standard_normal((3, 3, shape[-1], c_out)), jnp.float32)
  return x, w


def test_one_dimensional_identity():
  """F(2, 3): A^T [(G g) * (B^T d)] is the 'valid' correlation of a 4-tap input d with a
  3-tap filter g -- the identity the 2-D algorithm nests twice."""
  rng = np.random.default_rng(0)
  for _ in range(5):
    d, g = rng.standard_normal(4), rng.standard_normal(3)
    out = winograd.A_T @ ((winograd.G @ g) * (winograd.B_T @ d))
    np.testing.assert_allclose(out, [d[0:3] @ g, d[1:4] @ g], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('shape,c_out', [((2, 8, 8, 16), 24), ((1, 4, 6, 3), 5),
                                         ((3, 2, 2, 8), 8), ((2, 16, 12, 32), 16)])
def test_matches_direct_convolution(shape, c_out):
  x, w = random_pair(shape, c_out)
  want = direct(x, w)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(winograd.winograd_conv3x3(x, w), want, atol=2e-6 * scale)
  # The same under jit (where XLA fuses the transforms).
  np.testing.assert_allclose(jax.jit(winograd.winograd_conv3x3)(x, w), want, atol=2e-6 * scale)


def test_kernel_transform_closed_form():
  """U = G g G^T: for g = all ones, G g = (1, 1.5, 0.5, 1) per axis, so U is its outer
  product with itself."""
  u = winograd.kernel_transform(jnp.ones((3, 3, 1, 1), jnp.float32))[:, 0, 0]
  gg = np.array([1.0, 1.5, 0.5, 1.0])
  np.testing.assert_allclose(u, np.outer(gg, gg).ravel(), rtol=1e-7)


def test_bfloat16_close_to_float32():
  x, w = random_pair((2, 8, 8, 16), 16, seed=4)
  ref = direct(x, w)
  got = winograd.winograd_conv3x3(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), ref, atol=0.05 * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize('x_shape,w_shape', [((1, 5, 4, 2), (3, 3, 2, 2)),
                                             ((1, 4, 4, 2), (1, 1, 2, 2))])
def test_bad_shapes_raise(x_shape, w_shape):
  with pytest.raises(ValueError, match='even H, W and a 3x3 kernel'):
    winograd.winograd_conv3x3(jnp.zeros(x_shape), jnp.zeros(w_shape))
