"""Everything built from a config before a train or sample job runs.

`Experiment` bundles the model (with the kernels backend of `config.model.kernels`), the
schedule, the optimizer, the mesh and the train state's layout, so that training, sampling and
evaluation build them one way.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from ddpm_jax import config_checks, kernels, sharding
from ddpm_jax.checkpointing import has_checkpoint
from ddpm_jax.errors import ConfigError
from ddpm_jax.interop import diffusers as hf_interop
from ddpm_jax.models import count_params, create_model
from ddpm_jax.optim import make_optimizer
from ddpm_jax.schedules import Schedule, schedule_from_config
from ddpm_jax.train_step import TrainState, init_train_state, make_train_step


@dataclasses.dataclass
class Experiment:
  config: object
  model: object
  schedule: Schedule
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh

  @classmethod
  def from_config(cls, config, mesh=None) -> 'Experiment':
    config_checks.validate(config)
    if mesh is None:
      mesh = sharding.make_mesh(mesh_shape=config.train.mesh_shape)
    try:
      ops = kernels.from_config(config, mesh)
    except ValueError as e:  # 'cpu' kernels on other devices: names the config key.
      raise ConfigError(str(e)) from e
    return cls(config=config, model=create_model(config, ops=ops),
               schedule=schedule_from_config(config.diffusion),
               tx=make_optimizer(config.optim), mesh=mesh)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    d = self.config.data
    return (d.image_size, d.image_size, d.channels)

  def _init_fn(self):
    f = self.config.diffusion
    history = f.num_timesteps if f.importance_sampling else 0
    return functools.partial(init_train_state, self.model, self.tx, image_shape=self.image_shape,
                             loss_history_timesteps=history)

  def _rng(self):
    return jax.random.PRNGKey(self.config.train.seed)

  def abstract_state(self) -> TrainState:
    """Shapes and dtypes of the train state, with its sharding (replicated, or split over the
    mesh's `fsdp` axis, see `ddpm_jax.sharding`); nothing allocated."""
    shapes = jax.eval_shape(self._init_fn(), self._rng())
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, sharding.state_sharding(shapes, self.mesh))

  def state_sharding(self):
    return jax.tree.map(lambda s: s.sharding, self.abstract_state())

  def init_state(self, params=None) -> TrainState:
    """A fresh train state created directly on the devices with its final sharding; with
    `params` (laid out as `abstract_state().params`), one that starts from them."""
    init = jax.jit(lambda rng, p: self._init_fn()(rng, params=p),
                   out_shardings=self.state_sharding())
    return init(self._rng(), params)

  def _train_step(self):
    """`train_step` (not jitted), with the mesh that `config.train.exact_reduction` sums over
    (config_checks has made sure that its mesh_shape splits no parameters over `fsdp`)."""
    mesh = self.mesh if self.config.train.exact_reduction else None
    return make_train_step(self.model, self.tx, self.schedule, self.config, mesh)

  def jitted_train_step(self, num_steps: int = 1):
    """`train_step(state, batch) -> (state, metrics)` jitted over the mesh: batch split over the
    devices, state laid out as `state_sharding()` (replicated, or split over `fsdp`) and donated.

    With `num_steps` > 1, that many steps in one dispatch (a `lax.scan`; `config.train.
    steps_per_dispatch`): every leaf of the batches and metrics has a leading axis of
    `num_steps`. Saves the host's per-step launch and sync costs, which matter for small
    models on fast accelerators."""
    step_fn, batch_sharding = self._train_step(), sharding.batch_sharding(self.mesh)
    if num_steps > 1:
      one_step, batch_sharding = step_fn, sharding.stacked_batch_sharding(self.mesh)
      step_fn = lambda state, batches: jax.lax.scan(one_step, state, batches, length=num_steps)
    state_sharding = self.state_sharding()
    return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, sharding.replicated(self.mesh)),
                   donate_argnums=(0,))

  def jitted_state_check(self):
    """`(state, batch) -> (finite, loss)`: whether every float array of the train state is
    finite, and the loss that the next train step would compute from it on `batch` (an update
    can leave finite parameters whose loss is already NaN). Only the forward pass runs (XLA
    drops the unused gradient and update); the state is not donated."""
    step_fn = self._train_step()

    def check(state, batch):
      leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
      finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
      _, metrics = step_fn(state, batch)
      return finite, metrics['loss']

    return jax.jit(check, in_shardings=(self.state_sharding(),
                                        sharding.batch_sharding(self.mesh)),
                   out_shardings=sharding.replicated(self.mesh))

  def num_params(self) -> int:
    return count_params(self.abstract_state().params)


def imported_params(experiment: Experiment, workdir: str, init_from: str | None, doing: str):
  """The parameters of the diffusers model `init_from` (`ddpm_jax.interop.diffusers`) when
  `workdir` holds no checkpoint (sampling and evaluation then use it), else None."""
  if not init_from or has_checkpoint(workdir):
    return None
  params, folder = hf_interop.load_for_experiment(init_from, experiment)
  if jax.process_index() == 0:
    print(f'No checkpoint in {workdir}: {doing} --init_from={init_from} ({folder.unet_dir}).',
          flush=True)
  return params
