"""The CPU backend's GroupNorm (Wu & He 2018) fused with swish and dropout, with a
hand-written backward pass (`Ops.group_norm`, see `ddpm_jax.models.ops`).

    mu_g, var_g = mean and variance of x[b, :, :, c in g] over H, W and the group's channels
    x_hat       = (x - mu_g) / sqrt(var_g + eps)
    z           = scale_c * x_hat + bias_c
    y           = z * sigmoid(z)            (swish; or y = z)
    y           = y * keep / (1 - rate)     (dropout, keep ~ Bernoulli(1 - rate); or not)

The same function as `flax.linen.GroupNorm(use_fast_variance=False)`, `nn.swish` and
`nn.Dropout` with the same key (the same mask: `jax.random.bernoulli`), to float32 rounding
(tests/test_group_norm.py), but faster on a CPU: statistics are reduced over H and W first,
per channel, and then over the group's channels (a column reduction XLA vectorises, instead
of one strided reduction per group), and the backward pass is two passes over the activations
(one reduction that gives every per-channel sum the gradient needs, one elementwise pass that
writes dx) instead of the chain of reductions automatic differentiation produces. The backward
pass keeps only x, the (B, G) statistics and the dropout mask, not x_hat, z and sigmoid(z):
they are recomputed. Dropout is applied in the same passes instead of two more.

Backward (with dz = dy * d swish / dz and N = H * W * channels per group):

    d bias_c  = sum_{b,h,w} dz            d scale_c = sum_{b,h,w} dz * x_hat
    dx        = (dz * scale - mean_g(dz * scale) - x_hat * mean_g(dz * scale * x_hat))
                / sqrt(var_g + eps)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _per_group(v, num_groups: int):
  """(B, C) per-channel values -> (B, G) sums over each group's channels."""
  return v.reshape(v.shape[0], num_groups, -1).sum(-1)


def _to_channels(v, channels: int):
  """(B, G) per-group values -> (B, 1, 1, C), broadcastable against (B, H, W, C)."""
  return jnp.repeat(v, channels // v.shape[1], axis=1)[:, None, None, :]


def group_stats(x, num_groups: int, epsilon: float):
  """(mean, 1 / sqrt(var + eps)) of each (example, group), shapes (B, G), computed in two
  passes (the variance from x - mean, robust when |mean| >> std)."""
  B, H, W, C = x.shape
  n = H * W * (C // num_groups)
  mean = _per_group(jnp.sum(x, axis=(1, 2)), num_groups) / n
  d = x - _to_channels(mean, C)
  var = _per_group(jnp.sum(d * d, axis=(1, 2)), num_groups) / n
  return mean, jax.lax.rsqrt(var + epsilon)


def _normalise(x, scale, bias, mean, rstd, swish: bool):
  """(x_hat, z, y) from the statistics."""
  C = x.shape[-1]
  x_hat = (x - _to_channels(mean, C)) * _to_channels(rstd, C)
  z = x_hat * scale + bias
  y = z * jax.nn.sigmoid(z) if swish else z
  return x_hat, z, y


def _keep_mask(key, shape, rate: float):
  """`nn.Dropout`'s mask: True with probability 1 - rate."""
  return jax.random.bernoulli(key, 1.0 - rate, shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def group_norm(x, scale, bias, num_groups: int, epsilon: float, swish: bool = False,
               dropout_rate: float = 0.0, dropout_key=None):
  """GroupNorm of x (B, H, W, C) over `num_groups` channel groups with per-channel `scale` and
  `bias` (C,), followed by swish when `swish` and by dropout when `dropout_rate` > 0 (with the
  PRNG key `dropout_key`). C must be divisible by `num_groups`."""
  return _group_norm_fwd(x, scale, bias, num_groups, epsilon, swish, dropout_rate,
                         dropout_key)[0]


def _group_norm_fwd(x, scale, bias, num_groups, epsilon, swish, dropout_rate, dropout_key):
  if x.ndim != 4 or x.shape[-1] % num_groups:
    raise ValueError(f'group_norm expects (B, H, W, C) with C divisible by num_groups='
                     f'{num_groups}, got shape {x.shape}.')
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'group_norm needs 0 <= dropout_rate < 1, got {dropout_rate}.')
  mean, rstd = group_stats(x, num_groups, epsilon)
  y = _normalise(x, scale, bias, mean, rstd, swish)[2]
  keep = None
  if dropout_rate > 0:
    if dropout_key is None:
      raise ValueError('group_norm with dropout_rate > 0 needs a dropout_key.')
    keep = _keep_mask(dropout_key, x.shape, dropout_rate)
    y = jnp.where(keep, y / (1.0 - dropout_rate), 0.0)
  return y, (x, scale, bias, mean, rstd, keep)


def _group_norm_bwd(num_groups, epsilon, swish, dropout_rate, residuals, dy):
  del epsilon
  x, scale, bias, mean, rstd, keep = residuals
  B, H, W, C = x.shape
  n = H * W * (C // num_groups)
  if keep is not None:
    dy = jnp.where(keep, dy / (1.0 - dropout_rate), 0.0)
  x_hat, z, _ = _normalise(x, scale, bias, mean, rstd, False)
  if swish:
    s = jax.nn.sigmoid(z)
    dz = dy * s * (1 + z * (1 - s))
  else:
    dz = dy
  sum_dz = jnp.sum(dz, axis=(1, 2))                  # (B, C)
  sum_dz_xhat = jnp.sum(dz * x_hat, axis=(1, 2))     # (B, C)
  mean_dxhat = _per_group(sum_dz * scale, num_groups) / n
  mean_dxhat_xhat = _per_group(sum_dz_xhat * scale, num_groups) / n
  dx = _to_channels(rstd, C) * (dz * scale - _to_channels(mean_dxhat, C)
                                - x_hat * _to_channels(mean_dxhat_xhat, C))
  return dx.astype(x.dtype), jnp.sum(sum_dz_xhat, 0), jnp.sum(sum_dz, 0), None


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
