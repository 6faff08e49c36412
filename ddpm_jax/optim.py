"""Optimiser of the paper: Adam, linear learning-rate warm-up, gradient clipping, EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(optim_config) -> optax.Schedule:
  """lr(step) = lr * min(step / warmup_steps, 1), the paper's warm-up (5000 steps by default)."""
  if optim_config.warmup_steps > 0:
    return optax.linear_schedule(0.0, optim_config.lr, optim_config.warmup_steps)
  return optax.constant_schedule(optim_config.lr)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """g <- g * min(1, max_norm / ||g||), with ||g|| the global L2 norm of all gradients.

  The same clipping as `optax.clip_by_global_norm` (and the same, empty, state, so
  checkpoints are interchangeable), written as one scalar factor instead of a per-element
  select between g and g / ||g|| * max_norm. XLA then fuses the clipping into Adam's update
  instead of writing a clipped copy of every gradient (README, "Benchmarks", has the timing).
  """

  def update_fn(updates, state, params=None):
    del params
    factor = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
    return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """Global-norm gradient clipping followed by Adam with the warm-up schedule."""
  parts = []
  if optim_config.grad_clip > 0:
    parts.append(clip_by_global_norm(optim_config.grad_clip))
  parts.append(
      optax.adam(learning_rate_schedule(optim_config), b1=optim_config.adam_b1,
                 b2=optim_config.adam_b2, eps=optim_config.adam_eps))
  return optax.chain(*parts)


def ema_decay_at(step, decay: float, warmup: bool):
  """The EMA decay used at update `step` (0-based): `decay`, or with warm-up
  min(decay, (1 + step) / (10 + step)), the rule of TensorFlow's `ExponentialMovingAverage`
  given `num_updates`. Warm-up lets the average forget the random initialisation
  within tens of steps instead of ~1 / (1 - decay): at 600 steps with decay 0.995 and no
  warm-up, 0.995^600 = 5 % of the EMA is still the initial parameters.
  """
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, decay):
  """Exponential moving average of the parameters: ema <- decay * ema + (1 - decay) * params."""
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)
