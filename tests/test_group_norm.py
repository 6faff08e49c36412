"""The CPU backend's fused GroupNorm (+ swish, + dropout) and its hand-written backward pass
(ddpm_jax/kernels/group_norm.py) against Flax's GroupNorm, swish and Dropout and automatic
differentiation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.kernels.group_norm import group_norm, group_stats

EPS = 1e-6


def reference(x, scale, bias, num_groups, swish):
  y = nn.GroupNorm(num_groups=num_groups, epsilon=EPS, use_fast_variance=False).apply(
      {'params': {'scale': scale, 'bias': bias}}, x)
  return nn.swish(y) if swish else y


def inputs(shape, offset=0.0, spread=1.0, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  C = shape[-1]
  x = offset + spread * jax.random.normal(k[0], shape)
  scale = 1.0 + 0.3 * jax.random.normal(k[1], (C,))
  bias = 0.3 * jax.random.normal(k[2], (C,))
  cotangent = jax.random.normal(k[3], shape)
  return x, scale, bias, cotangent


@pytest.mark.parametrize('swish', [True, False])
@pytest.mark.parametrize('shape,groups', [((2, 8, 8, 32), 8), ((3, 4, 6, 12), 3),
                                          ((2, 4, 4, 8), 8)])
def test_forward_and_gradients_match_flax(shape, groups, swish):
  x, scale, bias, ct = inputs(shape)
  y = group_norm(x, scale, bias, groups, EPS, swish)
  np.testing.assert_allclose(y, reference(x, scale, bias, groups, swish), atol=2e-6, rtol=1e-5)

  def loss(f):
    return lambda x, s, b: jnp.sum(f(x, s, b) * ct)

  got = jax.grad(loss(lambda x, s, b: group_norm(x, s, b, groups, EPS, swish)),
                 argnums=(0, 1, 2))(x, scale, bias)
  want = jax.grad(loss(lambda x, s, b: reference(x, s, b, groups, swish)),
                  argnums=(0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.max(jnp.abs(w))), rtol=1e-4)


def test_gradient_matches_finite_differences():
  x, scale, bias, ct = inputs((2, 4, 4, 8), seed=3)
  f = lambda x: jnp.sum(group_norm(x, scale, bias, 4, EPS, True) * ct)
  g = jax.grad(f)(x)
  d = jax.random.normal(jax.random.PRNGKey(9), x.shape)
  h = 1e-2
  numeric = (f(x + h * d) - f(x - h * d)) / (2 * h)
  np.testing.assert_allclose(float(jnp.sum(g * d)), float(numeric), rtol=2e-3)


def test_statistics_are_robust_to_a_large_mean():
  """Two-pass variance: a mean 1e4 times the spread still gives the right variance."""
  x, *_ = inputs((2, 4, 4, 8), offset=1000.0, spread=0.1)
  mean, rstd = group_stats(x, 2, EPS)
  groups = np.asarray(x, np.float64).reshape(2, 4, 4, 2, 4)
  np.testing.assert_allclose(mean, groups.mean(axis=(1, 2, 4)), rtol=1e-6)
  np.testing.assert_allclose(rstd, 1 / np.sqrt(groups.var(axis=(1, 2, 4)) + EPS), rtol=2e-3)


def test_normalised_output_has_zero_mean_unit_variance_per_group():
  x, *_ = inputs((2, 6, 6, 16), offset=3.0, spread=5.0)
  C = 16
  y = np.asarray(group_norm(x, jnp.ones(C), jnp.zeros(C), 4, EPS, False)).reshape(2, 6, 6, 4, 4)
  np.testing.assert_allclose(y.mean(axis=(1, 2, 4)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 2, 4)), 1.0, rtol=1e-4)


def test_indivisible_channels_raise():
  x = jnp.zeros((1, 2, 2, 6))
  with pytest.raises(ValueError, match='C divisible by num_groups=4'):
    group_norm(x, jnp.ones(6), jnp.zeros(6), 4, EPS, True)


def test_fused_dropout_is_flax_dropout_with_the_same_key():
  """Dropout inside group_norm == GroupNorm, swish, then `nn.Dropout` with the same key (the
  same mask), in value and in gradient; the mask keeps about 1 - rate of the elements."""
  x, scale, bias, ct = inputs((4, 8, 8, 32), seed=5)
  key, rate = jax.random.PRNGKey(7), 0.25

  def fused(x, s, b):
    return group_norm(x, s, b, 8, EPS, True, rate, key)

  def flax_dropout(x, s, b):
    return nn.Dropout(rate).apply({}, reference(x, s, b, 8, True), deterministic=False,
                                  rng=key)

  y = fused(x, scale, bias)
  assert abs(float(jnp.mean(y == 0)) - rate) < 0.02
  np.testing.assert_array_equal(y == 0, flax_dropout(x, scale, bias) == 0)
  np.testing.assert_allclose(y, flax_dropout(x, scale, bias), atol=1e-5, rtol=1e-5)
  loss = lambda f: (lambda x, s, b: jnp.sum(f(x, s, b) * ct))
  got = jax.grad(loss(fused), argnums=(0, 1, 2))(x, scale, bias)
  want = jax.grad(loss(flax_dropout), argnums=(0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.max(jnp.abs(w))), rtol=1e-4)
  # Another key, another mask; no key with dropout is an error.
  other = group_norm(x, scale, bias, 8, EPS, True, rate, jax.random.PRNGKey(8))
  assert not np.array_equal(y == 0, other == 0)
  with pytest.raises(ValueError, match='needs a dropout_key'):
    group_norm(x, scale, bias, 8, EPS, True, rate, None)
