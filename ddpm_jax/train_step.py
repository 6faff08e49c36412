"""The train state and the pure, jittable train step (L_simple, Algorithm 1 of Ho et al.)."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ddpm_jax import diffusion
from ddpm_jax.optim import ema_update, learning_rate_schedule
from ddpm_jax.schedules import Schedule


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue exactly where it stopped.

  step: number of updates applied so far (int32 scalar). rng: the run's base key (uint32[2]);
  step keys are `fold_in(rng, step)`, so the key is never advanced and resuming is exact.
  The data position is a function of `step` too (see `ddpm_jax.input_pipeline`).
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def init_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                     image_shape) -> TrainState:
  """Initial parameters (EMA = parameters), optimizer state and step 0. Pure, jittable."""
  init_key, train_key = jax.random.split(rng)
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  params = model.init({'params': init_key}, x, t, train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    rng=train_key)


def make_train_step(model, tx: optax.GradientTransformation, schedule: Schedule,
                    config) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict]]:
  """`train_step(state, batch) -> (state, metrics)` for batches of images in [-1, 1].

  Algorithm 1: t ~ Uniform{0..T-1}, eps ~ N(0, I), gradient step on L_simple (eq. 14), then the
  EMA of the parameters. Metrics: loss, gradient global norm (before clipping), learning rate.
  """
  num_timesteps = schedule.num_timesteps
  mean_type = config.diffusion.mean_type
  ema_decay = config.optim.ema_decay
  lr_fn = learning_rate_schedule(config.optim)

  def train_step(state: TrainState, batch: jax.Array):
    rng = jax.random.fold_in(state.rng, state.step)
    key_t, key_noise, key_dropout = jax.random.split(rng, 3)
    x0 = batch.astype(jnp.float32)
    t = jax.random.randint(key_t, (x0.shape[0],), 0, num_timesteps, dtype=jnp.int32)
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    xt = diffusion.q_sample(schedule, x0, t, noise)

    def loss_fn(params):
      out = model.apply({'params': params}, xt, t, train=True, rngs={'dropout': key_dropout})
      return jnp.mean(diffusion.simple_loss(out, x0, noise, mean_type))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, ema_decay))
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'lr': lr_fn(state.step)}
    return new_state, metrics

  return train_step
