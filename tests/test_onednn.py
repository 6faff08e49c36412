"""oneDNN convolutions (ddpm_jax/kernels/onednn.py): equal to XLA's convolution and its
gradients, FLOPs counted as XLA counts them, under jax.vmap too."""

import importlib.metadata
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import common
from ddpm_jax.kernels import onednn


def _installed() -> bool:
  try:
    importlib.metadata.version('onednn-cpu-gomp')
    return True
  except importlib.metadata.PackageNotFoundError:
    return False


needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason='oneDNN convolutions not available here')


def _xla(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


CASES = [
    ((2, 8, 8, 16), (3, 3, 16, 32), (1, 1), 'SAME'),          # the U-Net's 3x3
    ((2, 8, 8, 16), (3, 3, 16, 8), (2, 2), 'SAME'),           # Downsample
    ((1, 7, 9, 5), (3, 3, 5, 6), (2, 2), 'SAME'),             # odd sizes, stride 2
    ((2, 9, 9, 16), (2, 2, 16, 8), (1, 1), 'VALID'),          # upsample_conv's phases
    ((2, 8, 8, 16), (1, 1, 16, 24), (1, 1), 'VALID'),         # dense layers on images
    ((2, 8, 8, 32), (3, 3, 32, 3), (1, 1), 'SAME'),           # conv_out
    ((2, 7, 5, 3), (3, 3, 3, 4), (1, 1), ((0, 1), (2, 0))),   # explicit, asymmetric padding
]


def test_available_where_installed():
  """CI installs requirements.txt on Linux x86-64 (as does the `[cpu]` extra): the oneDNN
  path must then be the one used, not a silent fallback."""
  if not (sys.platform.startswith('linux') and platform.machine() == 'x86_64' and _installed()):
    pytest.skip('oneDNN packages not installed on this platform')
  assert onednn.available(), onednn.describe()


@needs_onednn
@pytest.mark.parametrize('x_shape,w_shape,strides,padding', CASES)
def test_equals_xla_convolution_and_gradients(x_shape, w_shape, strides, padding):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape) / np.sqrt(np.prod(w_shape[:3]))
  y, vjp = jax.vjp(lambda x, w: onednn.conv2d(x, w, strides, padding), x, w)
  y_ref, vjp_ref = jax.vjp(lambda x, w: _xla(x, w, strides, padding), x, w)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  dy = jax.random.normal(kd, y.shape)
  for g, g_ref in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize('x_shape,w_shape,strides,padding', CASES)
def test_flops_counted_as_xla_counts_them(x_shape, w_shape, strides, padding):
  x, w = jnp.ones(x_shape), jnp.ones(w_shape)
  dy = jnp.ones(jax.eval_shape(lambda: _xla(x, w, strides, padding)).shape)
  for impl in (onednn.conv2d, _xla):
    fwd = jax.jit(lambda x, w, impl=impl: impl(x, w, strides, padding)).lower(x, w).compile()
    bwd = jax.jit(lambda x, w, impl=impl: jax.vjp(
        lambda x, w: impl(x, w, strides, padding), x, w)[1](dy)).lower(x, w).compile()
    if impl is _xla:
      ref = (common.compiled_flops(fwd), common.compiled_flops(bwd))
    else:
      got = (common.compiled_flops(fwd), common.compiled_flops(bwd))
  # XLA's cost analysis puts -1 FLOP on each custom call it cannot see into.
  np.testing.assert_allclose(got, ref, atol=2)
  assert ref[1] == 2 * ref[0]


@needs_onednn
def test_vmap_over_a_leading_axis():
  """jax.vmap of the convolution and its gradients (one call per vmapped element)."""
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 2, 8, 8, 4))
  w = jax.random.normal(jax.random.PRNGKey(6), (3, 3, 4, 5)) * 0.2
  f = lambda x: jnp.sum(onednn.conv2d(x, w) ** 2)
  f_ref = lambda x: jnp.sum(_xla(x, w, (1, 1), 'SAME') ** 2)
  np.testing.assert_allclose(jax.vmap(f)(x), jax.vmap(f_ref)(x), rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(jax.grad(f))(x), jax.vmap(jax.grad(f_ref))(x),
                             rtol=1e-4, atol=1e-4)
