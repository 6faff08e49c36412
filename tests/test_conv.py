"""Tests for the U-Net's convolution (`ddpm_jax.models.conv`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.models import conv


def lax_conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('x_shape,w_shape,strides,padding,platform,want', [
    ((8, 16, 16, 256), (3, 3, 256, 256), (1, 1), 'SAME', 'cpu', True),    # 8 MiB transformed
    ((8, 16, 16, 384), (3, 3, 384, 256), (1, 1), 'SAME', 'cpu', True),    # 12 MiB: the limit
    ((8, 8, 8, 512), (3, 3, 512, 256), (1, 1), 'SAME', 'cpu', True),
    ((2, 32, 32, 128), (3, 3, 128, 128), (1, 1), 'SAME', 'cpu', True),
    ((8, 32, 32, 128), (3, 3, 128, 128), (1, 1), 'SAME', 'cpu', False),   # 16 MiB
    ((8, 16, 16, 512), (3, 3, 512, 256), (1, 1), 'SAME', 'cpu', False),   # 16 MiB
    ((8, 16, 16, 256), (3, 3, 256, 256), (1, 1), 'SAME', 'gpu', False),   # accelerators
    ((8, 8, 8, 128), (3, 3, 128, 128), (1, 1), 'SAME', 'cpu', False),     # 4.2 MFLOP products
    ((16, 16, 16, 64), (3, 3, 64, 64), (1, 1), 'SAME', 'cpu', False),     # 64 channels
    ((8, 4, 4, 256), (3, 3, 256, 256), (1, 1), 'SAME', 'cpu', False),     # too small
    ((8, 16, 16, 256), (3, 3, 256, 256), (2, 2), 'SAME', 'cpu', False),   # strided
    ((8, 16, 16, 256), (2, 2, 256, 256), (1, 1), 'VALID', 'cpu', False),  # not 3x3 SAME
    ((8, 14, 15, 256), (3, 3, 256, 256), (1, 1), 'SAME', 'cpu', False),   # odd width
])
def test_use_winograd(x_shape, w_shape, strides, padding, platform, want):
  assert conv.use_winograd(x_shape, w_shape, strides, padding, platform) is want


def test_use_winograd_counts_bytes():
  """bfloat16 halves the transformed input: 16x16x512 at batch 8 fits in 12 MiB."""
  args = ((8, 16, 16, 512), (3, 3, 512, 256), (1, 1), 'SAME', 'cpu')
  assert not conv.use_winograd(*args, itemsize=4)
  assert conv.use_winograd(*args, itemsize=2)


def no_winograd_minimum(monkeypatch):
  """Let small test shapes take the Winograd path (no channel and FLOP minimum)."""
  monkeypatch.setattr(conv, 'WINOGRAD_MIN_CHANNELS', 1)
  monkeypatch.setattr(conv, 'WINOGRAD_MIN_FLOPS', 0)


@pytest.mark.parametrize('x_shape,w_shape,strides,padding,winograd', [
    ((4, 16, 16, 128), (3, 3, 128, 128), (1, 1), 'SAME', True),   # Winograd as configured
    ((2, 8, 8, 16), (3, 3, 16, 24), (1, 1), 'SAME', True),        # Winograd, no minimum
    ((2, 16, 12, 8), (3, 3, 8, 8), (1, 1), 'SAME', True),         # Winograd, no minimum
    ((2, 4, 4, 16), (3, 3, 16, 8), (1, 1), 'SAME', False),        # direct (too small)
    ((2, 8, 8, 16), (3, 3, 16, 16), (2, 2), 'SAME', False),       # direct (Downsample)
    ((2, 5, 5, 8), (2, 2, 8, 8), (1, 1), 'VALID', False),         # direct (upsampling phase)
])
def test_conv2d_matches_lax(x_shape, w_shape, strides, padding, winograd, monkeypatch):
  """Values and both gradients equal XLA's convolution, on either path, under jit (with XLA's
  direct convolution, the one Winograd is an alternative to)."""
  monkeypatch.setattr(conv, 'use_onednn', lambda *args: False)
  if x_shape[-1] < 128:
    no_winograd_minimum(monkeypatch)
  assert conv.use_winograd(x_shape, w_shape, strides, padding, jax.default_backend()) is (
      winograd and jax.default_backend() == 'cpu')
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  f_ref = lambda x, w: lax_conv(x, w, strides, padding)
  f = jax.jit(lambda x, w: conv.conv2d(x, w, strides, padding))
  want = f_ref(x, w)
  np.testing.assert_allclose(f(x, w), want, atol=2e-6 * float(jnp.max(jnp.abs(want))))
  dy = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  grads = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy))(x, w, dy)
  for got, ref in zip(grads, jax.vjp(f_ref, x, w)[1](dy)):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref))))


def test_allow_winograd_false_is_the_direct_convolution(monkeypatch):
  """Training turns Winograd off: the result is then XLA's direct convolution, bit for bit,
  where Winograd's differs by rounding. (With oneDNN's direct convolution, Winograd is never
  taken: tests/test_onednn_conv.py.)"""
  no_winograd_minimum(monkeypatch)
  monkeypatch.setattr(conv, 'use_onednn', lambda *args: False)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 16, 8)), jnp.float32)
  want = jax.jit(lambda x, w: lax_conv(x, w, (1, 1), 'SAME'))(x, w)
  direct = jax.jit(lambda x, w: conv.conv2d(x, w, allow_winograd=False))(x, w)
  winograd = jax.jit(conv.conv2d)(x, w)
  np.testing.assert_array_equal(direct, want)
  assert not np.array_equal(winograd, want)
  np.testing.assert_allclose(winograd, want, atol=2e-6 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize('x_shape,w_shape,strides,padding,platform,want', [
    ((8, 32, 32, 128), (3, 3, 128, 3), (1, 1), 'SAME', 'cpu', True),   # CIFAR-10 conv_out
    ((32, 32, 32, 32), (3, 3, 32, 1), (1, 1), 'SAME', 'cpu', True),    # quickstart conv_out
    ((2, 5, 7, 8), (3, 3, 8, 4), (1, 1), 'SAME', 'cpu', True),
    ((2, 8, 8, 8), (3, 3, 8, 5), (1, 1), 'SAME', 'cpu', False),        # too many outputs
    ((2, 8, 8, 8), (3, 3, 8, 3), (2, 2), 'SAME', 'cpu', False),        # strided
    ((2, 8, 8, 8), (3, 3, 8, 3), (1, 1), 'VALID', 'cpu', False),
    ((2, 8, 8, 8), (3, 3, 8, 3), (1, 1), 'SAME', 'gpu', False),
])
def test_use_shift_sum(x_shape, w_shape, strides, padding, platform, want):
  assert conv.use_shift_sum(x_shape, w_shape, strides, padding, platform) is want


@pytest.mark.parametrize('x_shape,c_out', [((2, 5, 7, 8), 3), ((1, 4, 4, 16), 1)])
def test_shift_sum_conv3x3_matches_lax(x_shape, c_out):
  """The nine shifted tap slices add up to XLA's 'SAME' convolution, borders included (odd
  and even sizes), and their own gradients equal XLA's."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, x_shape[-1], c_out)), jnp.float32)
  f_ref = lambda x, w: lax_conv(x, w, (1, 1), 'SAME')
  want = f_ref(x, w)
  got = conv.shift_sum_conv3x3(x, w)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-6 * float(jnp.max(jnp.abs(want))))
  dy = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  for g, ref in zip(jax.vjp(conv.shift_sum_conv3x3, x, w)[1](dy), jax.vjp(f_ref, x, w)[1](dy)):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref))))


def test_conv2d_output_convolution_takes_shift_sum_forward_and_direct_gradients():
  """conv2d's few-output-channel path: values equal XLA's up to rounding (and are not bit
  for bit XLA's, so the path is taken on CPU); gradients are the direct convolution's
  (`conv._direct`: oneDNN's or XLA's), bit for bit."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 16, 3)), jnp.float32)
  f_ref = jax.jit(lambda x, w: lax_conv(x, w, (1, 1), 'SAME'))
  f = jax.jit(lambda x, w: conv.conv2d(x, w, allow_winograd=False))
  want, got = f_ref(x, w), f(x, w)
  np.testing.assert_allclose(got, want, atol=2e-6 * float(jnp.max(jnp.abs(want))))
  if jax.default_backend() == 'cpu':
    assert not np.array_equal(got, want)
  dy = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  grads = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy))(x, w, dy)
  f_direct = lambda x, w: conv._direct(x, w, (1, 1), 'SAME')
  ref = jax.jit(lambda x, w, dy: jax.vjp(f_direct, x, w)[1](dy))(x, w, dy)
  for g, r in zip(grads, ref):
    np.testing.assert_array_equal(g, r)
