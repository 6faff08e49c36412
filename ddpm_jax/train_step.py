"""The train state and the pure, jittable train step (Algorithm 1 of Ho et al., with every
objective of `ddpm_jax.objectives.training_losses`)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jax.sharding import PartitionSpec as P

from ddpm_jax import diffusion, objectives, sharding
from ddpm_jax.optim import ema_decay_at, ema_update, learning_rate_schedule
from ddpm_jax.schedules import Schedule


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue exactly where it stopped.

  step: number of updates applied so far (int32 scalar). rng: the run's base key (uint32[2]);
  step keys are `fold_in(rng, step)`, so the key is never advanced and resuming is exact.
  The data position is a function of `step` too (see `ddpm_jax.data.pipeline`).
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


class TrainStateWithLossHistory(TrainState):
  """The train state of runs with importance sampling of t (`config.diffusion.
  importance_sampling`): also the per-timestep loss history (`objectives.init_loss_history`),
  checkpointed with the rest. A subclass, so that every other run's state (and checkpoint)
  keeps exactly the fields above."""

  loss_history: Any = None


def init_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                     image_shape, loss_history_timesteps: int = 0, params=None) -> TrainState:
  """Initial parameters (EMA = parameters), optimizer state and step 0. Pure, jittable.

  loss_history_timesteps > 0 (= T): also an empty loss history for importance sampling of t.
  params: start from these parameters (e.g. imported weights) instead of the model's
  initialisation; everything else is as for a fresh run.
  """
  init_key, train_key = jax.random.split(rng)
  if params is None:
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    params = model.init({'params': init_key}, x, t, train=False)['params']
  fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                rng=train_key)
  if loss_history_timesteps > 0:
    return TrainStateWithLossHistory(
        **fields, loss_history=objectives.init_loss_history(loss_history_timesteps))
  return TrainState(**fields)


def _split_micro(x, k: int):
  """(B, ...) -> (k, B/k, ...) with micro-batch j = rows j, j+k, j+2k, ...: when the batch is
  split over devices in contiguous blocks (a multiple of k rows each), every micro-batch is
  spread over all devices and the reshape moves no data between them."""
  return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def _unsplit_micro(x):
  """The inverse of `_split_micro`: (k, B/k, ...) -> (B, ...) in the original row order."""
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])


def accumulated_value_and_grad(loss_fn, params, per_example, key, num_micro: int):
  """`((loss, aux), grads)` of `loss_fn(params, *per_example, key)` over the whole batch,
  computed as `num_micro` micro-batches in a `lax.scan` (gradient accumulation).

  `loss_fn` returns (mean loss over its examples, aux); `per_example` is a tuple of pytrees
  whose leaves all have the batch as their first axis. The micro-batches are equal in size, so
  the mean of their losses and gradients is the loss and gradient of the full batch, up to
  float rounding. aux leaves with a batch axis are put back in full-batch order; others are
  averaged. With `num_micro == 1` this is exactly `jax.value_and_grad(loss_fn, has_aux=True)`.

  Randomness: everything drawn per example before the split (t, noise, label dropout) is that
  of the full batch. Dropout masks are drawn inside the network, per micro-batch, with key
  `fold_in(key, j)` for micro-batch j: the same distribution as the full batch's masks but not
  the same values, so with dropout > 0 the result equals the full batch only in distribution.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_micro == 1:
    return grad_fn(params, *per_example, key)
  batch = jax.tree.leaves(per_example)[0].shape[0]
  if batch % num_micro:
    raise ValueError(f'A batch of {batch} does not split into config.train.grad_accum_steps='
                     f'{num_micro} equal micro-batches.')
  micro = jax.tree.map(lambda x: _split_micro(x, num_micro), per_example)

  def body(carry, xs):
    loss_sum, grad_sum = carry
    j, mb = xs
    (loss, aux), grads = grad_fn(params, *mb, jax.random.fold_in(key, j))
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), aux

  zeros = jax.tree.map(jnp.zeros_like, params)
  (loss_sum, grad_sum), aux = jax.lax.scan(
      body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(num_micro), micro))
  micro_size = batch // num_micro
  aux = jax.tree.map(
      lambda a: _unsplit_micro(a) if a.ndim >= 2 and a.shape[1] == micro_size else a.mean(0),
      aux)
  return ((loss_sum / num_micro, aux),
          jax.tree.map(lambda g: g / num_micro, grad_sum))


def exact_value_and_grad(loss_fn, params, per_example, key, num_micro: int, mesh):
  """`accumulated_value_and_grad` with the sum over devices in a fixed order, so that the
  result does not depend on how the devices are split into processes (`config.train.
  exact_reduction`).

  An all-reduce adds the devices' partial gradients in an order that depends on the
  collective's implementation: within one process XLA sums them one way, across processes gloo
  or NCCL another, and float addition is not associative. Here each device computes its
  shard's mean loss and gradient (`shard_map`), the per-device results are all-gathered (a copy,
  no arithmetic) and every device adds them up in device order. The batch must be split in
  equal contiguous blocks over the mesh's batch axes with parameters replicated (no `fsdp`).
  Costs one parameter-sized buffer per device in memory and an all-gather instead of an
  all-reduce. Dropout keys are folded with the device index.
  """
  axes, n = sharding.AXES, sharding.num_batch_shards(mesh)

  def local(params, per_example, key):
    index = jax.lax.axis_index(axes)
    (loss, aux), grads = accumulated_value_and_grad(
        loss_fn, params, per_example, jax.random.fold_in(key, index), num_micro)
    all_loss, all_grads = jax.lax.all_gather((loss, grads), axes)
    # Mean over equal shards = sum of the shards' means / n, added up in device order.
    total = lambda x: jnp.sum(x, axis=0) / n
    return (total(all_loss), aux), jax.tree.map(total, all_grads)

  batch_spec = P(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), batch_spec, P()),
                       out_specs=((P(), batch_spec), P()), check_vma=False)(
                           params, per_example, key)


def make_train_step(model, tx: optax.GradientTransformation, schedule: Schedule,
                    config, mesh=None) -> Callable[[TrainState, jax.Array],
                                                   tuple[TrainState, dict]]:
  """`train_step(state, batch) -> (state, metrics)` for batches of images in [-1, 1] (or dicts
  {'image': (B, H, W, C), 'label': (B,) int} for a class-conditional model).

  Algorithm 1: t ~ Uniform{0..T-1} (or importance-sampled, N&D Sec. 3.3), eps ~ N(0, I),
  gradient step on `config.diffusion.loss` (`objectives.training_losses`), then the EMA of the
  parameters. A conditional model's labels are replaced by the null label with probability
  `config.train.label_dropout` (classifier-free guidance). Metrics: loss, gradient global norm
  (before clipping), learning rate, and the mse / vlb (bits/dim) terms where computed.
  """
  dcfg, ocfg, num_classes = config.diffusion, config.optim, config.model.num_classes
  loss_kwargs = dict(mean_type=dcfg.mean_type, var_type=dcfg.var_type, loss_type=dcfg.loss,
                     hybrid_lambda=dcfg.hybrid_lambda, min_snr_gamma=dcfg.min_snr_gamma)
  lr_fn = learning_rate_schedule(ocfg)
  value_and_grad = accumulated_value_and_grad
  if config.train.exact_reduction:
    if mesh is None:
      raise ValueError('config.train.exact_reduction needs the mesh (make_train_step(..., mesh)).')
    value_and_grad = functools.partial(exact_value_and_grad, mesh=mesh)

  def train_step(state: TrainState, batch: jax.Array):
    rng = jax.random.fold_in(state.rng, state.step)
    key_t, key_noise, key_dropout = jax.random.split(rng, 3)
    x0, labels = (batch['image'], batch.get('label')) if isinstance(batch, dict) else (batch, None)
    x0 = x0.astype(jnp.float32)
    batch_size = x0.shape[0]
    if dcfg.importance_sampling:
      t, weights = objectives.sample_timesteps_importance(key_t, state.loss_history, batch_size)
    else:
      t = jax.random.randint(key_t, (batch_size,), 0, schedule.num_timesteps, dtype=jnp.int32)
      weights = None
    noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
    xt = diffusion.q_sample(schedule, x0, t, noise)
    model_args = ()
    if num_classes > 0:
      if labels is None:
        raise ValueError(
            'config.model.num_classes > 0 needs labelled batches {"image", "label"}; the batch '
            'holds images only.')
      drop = jax.random.bernoulli(jax.random.fold_in(rng, 1), config.train.label_dropout,
                                  (batch_size,))
      model_args = (jnp.where(drop, num_classes, labels.astype(jnp.int32)),)

    def loss_fn(params, xt, t, x0, noise, model_args, weights, key_dropout):  # One micro-batch.
      out = model.apply({'params': params}, xt, t, *model_args, train=True,
                        rngs={'dropout': key_dropout})
      terms = objectives.training_losses(schedule, out, x0, xt, t, noise, **loss_kwargs)
      losses = terms['loss'] if weights is None else terms['loss'] * weights
      return jnp.mean(losses), terms

    (loss, terms), grads = value_and_grad(loss_fn, state.params,
                                          (xt, t, x0, noise, model_args, weights), key_dropout,
                                          config.train.grad_accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params,
                               ema_decay_at(state.step, ocfg.ema_decay, ocfg.ema_warmup)))
    if dcfg.importance_sampling:
      new_state = new_state.replace(loss_history=objectives.update_loss_history(
          state.loss_history, t, jax.lax.stop_gradient(terms['loss'])))
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'lr': lr_fn(state.step)}
    if dcfg.loss != 'mse':
      metrics.update({k: jnp.mean(terms[k]) for k in ('mse', 'vlb') if k in terms})
    return new_state, metrics

  return train_step
