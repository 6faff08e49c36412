"""The CPU backend's upsampling convolution (`ddpm_jax.kernels.upsample`): the convolution
of the nearest-neighbour x2 upsampled image, computed at the low resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import common
from ddpm_jax.kernels import upsample

NHWC = ('NHWC', 'HWIO', 'NHWC')


def reference(x, w, strides=(1, 1), padding='SAME'):
  u = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return lax.conv_general_dilated(u, w, strides, padding, dimension_numbers=NHWC)


def test_nearest_x2_repeats_every_pixel_in_a_2x2_block():
  x = jnp.arange(6.0).reshape(1, 2, 3, 1)
  y = np.asarray(upsample.nearest_x2(x))[0, :, :, 0]
  np.testing.assert_array_equal(y, [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2],
                                    [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]])


@pytest.mark.parametrize('size', [1, 2, 5])
def test_phases_equal_upsampling_then_convolving(size):
  """Values and both gradients, odd and even sizes, a non-square image."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, 6)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 6, 5)) / np.sqrt(54), jnp.float32)
  f = lambda x, w: upsample.upsample_conv(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
  out = jax.jit(f)(x, w)
  want = reference(x, w)
  assert out.shape == (2, 2 * size, 2 * size + 2, 5)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  ct = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  got = jax.grad(lambda x, w: jnp.sum(f(x, w) * ct), argnums=(0, 1))(x, w)
  ref = jax.grad(lambda x, w: jnp.sum(reference(x, w) * ct), argnums=(0, 1))(x, w)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_phases_do_fewer_multiply_adds():
  """4 multiply-adds per output pixel and channel pair instead of 9 (XLA's FLOP count plus
  oneDNN's calls'; XLA does not count the taps that fall on the zero padding)."""
  x, w = jnp.ones((1, 8, 8, 32)), jnp.ones((3, 3, 32, 32))
  flops = lambda f: common.compiled_flops(jax.jit(f).lower(x, w).compile())
  phases = flops(lambda x, w: upsample.upsample_conv(x, w, (1, 1), 'SAME',
                                                     dimension_numbers=NHWC))
  assert flops(reference) == 2 * 32 * 32 * (3 * 16 - 2) ** 2
  assert phases == pytest.approx(2 * 32 * 32 * 16 * 16 * 4, rel=0.01)   # + the tap sums


def test_other_convolutions_upsample_then_convolve():
  """Strided or 1x1 kernels take the plain route: upsample, then convolve."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((1, 4, 4, 3)), jnp.float32)
  for w_shape, strides in [((3, 3, 3, 2), (2, 2)), ((1, 1, 3, 2), (1, 1))]:
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    got = upsample.upsample_conv(x, w, strides, 'SAME', dimension_numbers=NHWC)
    np.testing.assert_allclose(got, reference(x, w, strides), rtol=1e-5, atol=1e-5)
