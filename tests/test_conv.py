"""The CPU backend's convolution and dense product (`ddpm_jax.kernels.conv`): XLA's
convolution and `nn.Dense` in value and gradient, oneDNN taken where it applies (dense layers
on images included), XLA's own computation (bit for bit) everywhere else."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ddpm_jax.kernels import conv, onednn

NHWC = ('NHWC', 'HWIO', 'NHWC')


def lax_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _random(rng, *shapes):
  return [jnp.asarray(rng.standard_normal(s) / np.sqrt(np.prod(s[:-1])), jnp.float32)
          for s in shapes]


@pytest.mark.parametrize('x_shape,w_shape,strides,padding', [
    ((2, 8, 8, 16), (3, 3, 16, 32), (1, 1), 'SAME'),          # the U-Net's 3x3
    ((2, 8, 8, 16), (3, 3, 16, 16), (2, 2), 'SAME'),          # Downsample
    ((2, 8, 8, 16), (1, 1, 16, 24), (1, 1), 'VALID'),         # 1x1
    ((2, 8, 8, 32), (3, 3, 32, 3), (1, 1), 'SAME'),           # conv_out
    ((2, 5, 7, 8), (3, 3, 8, 1), (1, 1), 'SAME'),             # odd sizes, one channel out
    ((2, 7, 5, 3), (3, 3, 3, 4), (1, 1), ((0, 1), (2, 0))),   # explicit, asymmetric padding
])
def test_conv_general_dilated_equals_xla_in_value_and_gradient(x_shape, w_shape, strides,
                                                                padding):
  rng = np.random.default_rng(0)
  x, w = _random(rng, x_shape, w_shape)
  f = jax.jit(lambda x, w: conv.conv_general_dilated(x, w, strides, padding,
                                                     dimension_numbers=NHWC))
  f_ref = jax.jit(lambda x, w: lax_conv(x, w, strides, padding))
  y, y_ref = f(x, w), f_ref(x, w)
  scale = float(jnp.max(jnp.abs(y_ref)))
  np.testing.assert_allclose(y, y_ref, atol=2e-6 * scale, rtol=1e-5)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  grads = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy))(x, w, dy)
  grads_ref = jax.jit(lambda x, w, dy: jax.vjp(f_ref, x, w)[1](dy))(x, w, dy)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, atol=1e-5 * float(jnp.max(jnp.abs(g_ref))), rtol=1e-4)


@pytest.mark.skipif(not onednn.available(), reason='oneDNN convolutions not available here')
def test_float32_nhwc_convolutions_and_dense_layers_on_images_run_through_onednn():
  x = jnp.ones((2, 8, 8, 16))
  w, k = jnp.ones((3, 3, 16, 3)), jnp.ones((16, 5))

  def onednn_calls(f, *args):
    hlo = jax.jit(f).lower(*args).compile().as_text()
    return [line for line in hlo.splitlines()
            if onednn.TARGETS['forward'] in line and 'custom-call(' in line]

  calls = onednn_calls(lambda x, w: conv.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                              dimension_numbers=NHWC), x, w)
  assert len(calls) == 1 and 'f32[2,8,8,3]' in calls[0]
  calls = onednn_calls(lambda x, k: nn.Dense(5, dot_general=conv.dot_general).apply(
      {'params': {'kernel': k, 'bias': jnp.zeros(5)}}, x), x, k)
  assert len(calls) == 1 and 'f32[2,8,8,5]' in calls[0]


@pytest.mark.parametrize('case', ['nchw', 'dilated', 'groups', 'bfloat16'])
def test_other_convolutions_are_xla_bit_for_bit(case):
  rng = np.random.default_rng(1)
  x, w = _random(rng, (2, 8, 8, 4), (3, 3, 4, 4))
  kwargs = dict(dimension_numbers=NHWC)
  if case == 'nchw':
    x, w = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
    kwargs = dict(dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  elif case == 'dilated':
    kwargs['rhs_dilation'] = (2, 2)
  elif case == 'groups':
    w = w[:, :, :2]
    kwargs['feature_group_count'] = 2
  else:
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  got = jax.jit(lambda x, w: conv.conv_general_dilated(x, w, (1, 1), 'SAME', **kwargs))(x, w)
  want = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', **kwargs))(x, w)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('shape', [(2, 4, 4, 8), (3, 8), (2, 3, 8)])
def test_dense_through_dot_general_is_flax_dense(shape):
  """`nn.Dense(dot_general=conv.dot_general)`: on images a 1x1 convolution, otherwise XLA's
  product; both equal stock `nn.Dense` with the same parameters, values and gradients."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  dense, stock = nn.Dense(6, dot_general=conv.dot_general), nn.Dense(6)
  params = stock.init(jax.random.PRNGKey(0), x)['params']
  params = {'kernel': params['kernel'], 'bias': params['bias'] + 0.5}
  assert (jax.tree.map(jnp.shape, dense.init(jax.random.PRNGKey(0), x)['params'])
          == jax.tree.map(jnp.shape, params))
  out = dense.apply({'params': params}, x)
  ref = np.asarray(x, np.float64) @ np.asarray(params['kernel'], np.float64) + 0.5
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  loss = lambda f, p, x: jnp.sum(jnp.sin(f.apply({'params': p}, x)))
  got = jax.grad(lambda p, x: loss(dense, p, x), argnums=(0, 1))(params, x)
  want = jax.grad(lambda p, x: loss(stock, p, x), argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
  if len(shape) != 4:
    np.testing.assert_array_equal(out, stock.apply({'params': params}, x))
