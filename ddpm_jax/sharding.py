"""The device mesh and how arrays are laid out on it.

The mesh has two axes, `('data', 'fsdp')`, over every device of every process
(`config.train.mesh_shape`, default `(-1, 1)`: pure data parallelism).

* Batches are split along their first axis over *both* axes: every device sees its own slice of
  the global batch (FSDP is data parallelism too).
* The train state (parameters, EMA, optimizer state) is replicated when the `fsdp` axis has size
  1. With `fsdp` > 1 every array of the state with an axis divisible by the `fsdp` size is split
  along its largest such axis (ZeRO-3 / FSDP); the rest (scalars, the step, the RNG, odd shapes)
  is replicated. Nothing else changes: XLA's SPMD partitioner inserts the collectives that
  gather parameters for the forward and backward passes and reduce the gradients onto the
  shards, so the update is that of data parallelism up to float rounding.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from ddpm_jax.errors import ConfigError

# The mesh's axes; a batch's first dimension is split over both.
AXES = ('data', 'fsdp')


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, int]:
  """`(data, fsdp)` sizes for `num_devices` devices from a `config.train.mesh_shape` that
  `config_checks` has validated: `(n,)` means `(n, 1)`, and a -1 takes the remaining devices.

  Raises ConfigError naming `config.train.mesh_shape` when the devices do not fit it.
  """
  shape = (tuple(mesh_shape) + (1,))[:2]
  what = f'config.train.mesh_shape={tuple(mesh_shape)!r}'
  known = math.prod(s for s in shape if s != -1)
  if -1 not in shape and known != num_devices:
    raise ConfigError(f'{what} needs {known} devices but there are {num_devices}.')
  if num_devices % known:
    raise ConfigError(f'{what} does not fit {num_devices} devices: {known} does not divide '
                      f'{num_devices}.')
  return tuple(num_devices // known if s == -1 else s for s in shape)


def make_mesh(devices=None, mesh_shape: Sequence[int] = (-1, 1)) -> jax.sharding.Mesh:
  """A `('data', 'fsdp')` mesh over all devices (of all processes) or the given ones."""
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def num_batch_shards(mesh) -> int:
  """How many ways a batch is split: the number of devices of the mesh."""
  return mesh.size


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """First axis split over every device (`data` and `fsdp`), the rest replicated."""
  return NamedSharding(mesh, P(AXES))


def stacked_batch_sharding(mesh) -> NamedSharding:
  """Several batches stacked on a leading (step) axis: the second axis split like a batch."""
  return NamedSharding(mesh, P(None, AXES))


def fsdp_spec(shape: Sequence[int], fsdp: int) -> P:
  """The partition of an array of `shape` over an `fsdp` axis of size `fsdp`: its largest axis
  divisible by `fsdp` (the first one on ties), or replicated if none is (or `fsdp` is 1)."""
  if fsdp <= 1:
    return P()
  candidates = [(-size, i) for i, size in enumerate(shape) if size % fsdp == 0]
  if not candidates:
    return P()
  _, axis = min(candidates)
  return P(*([None] * axis + ['fsdp']))


def state_sharding(abstract_tree, mesh):
  """The sharding of every leaf of a (shape-only) train state on `mesh` (see module doc)."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp)), abstract_tree)


def check_divisible(global_batch: int, mesh, grad_accum_steps: int = 1) -> None:
  """`config.train.batch_size` must split evenly over the processes, and each of its
  `grad_accum_steps` micro-batches over the devices of the mesh."""
  n_dev, n_proc, unit = num_batch_shards(mesh), jax.process_count(), grad_accum_steps
  what = f'config.train.batch_size={global_batch}'
  if global_batch % (unit * n_dev):
    micro = (f' in config.train.grad_accum_steps={unit} micro-batches' if unit > 1 else '')
    raise ConfigError(f'{what} does not divide across the {n_dev} devices of the mesh{micro}; '
                      f'use a multiple of {unit * n_dev}.')
  if global_batch % n_proc:
    raise ConfigError(f'{what} does not divide across {n_proc} processes.')


def global_batch_from_local(local, mesh, stacked: bool = False):
  """Assemble each process's slice of the batch into one global array split over the devices.

  Each process passes the rows it read (`global_batch // process_count` of them, as produced
  by `data.create_train_iterator(..., process_index, process_count)`). The global
  array is their concatenation in process order when each process's devices form one
  contiguous block of the mesh (always so on CPU and GPU; on TPU `jax.make_mesh` may order
  devices by the physical topology, and then the rows are a permutation of that concatenation:
  the same examples, the same mean loss).
  """
  # Stacked batches (steps, local batch, ...) have the batch as their second axis.
  axis = 1 if stacked else 0
  sharding = stacked_batch_sharding(mesh) if stacked else batch_sharding(mesh)

  def assemble(x):
    global_shape = x.shape[:axis] + (x.shape[axis] * jax.process_count(),) + x.shape[axis + 1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  # A labelled batch {'image', 'label'}: every leaf is split the same way along its rows.
  return jax.tree.map(assemble, local)
