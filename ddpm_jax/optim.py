"""Optimiser of the paper: Adam, linear learning-rate warm-up, gradient clipping, EMA."""

from __future__ import annotations

import optax


def learning_rate_schedule(optim_config) -> optax.Schedule:
  """lr(step) = lr * min(step / warmup_steps, 1), the paper's warm-up (5000 steps by default)."""
  if optim_config.warmup_steps > 0:
    return optax.linear_schedule(0.0, optim_config.lr, optim_config.warmup_steps)
  return optax.constant_schedule(optim_config.lr)


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """Global-norm gradient clipping followed by Adam with the warm-up schedule."""
  parts = []
  if optim_config.grad_clip and optim_config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
  parts.append(
      optax.adam(learning_rate_schedule(optim_config), b1=optim_config.adam_b1,
                 b2=optim_config.adam_b2, eps=optim_config.adam_eps))
  return optax.chain(*parts)


def ema_update(ema_params, params, decay: float):
  """Exponential moving average of the parameters: ema <- decay * ema + (1 - decay) * params."""
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)
