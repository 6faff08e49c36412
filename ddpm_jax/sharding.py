"""The device mesh and how arrays are laid out on it.

Data parallelism over a one-axis mesh `('data',)` of every device of every process: batches are
split along their first axis, the train state is replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A `('data',)` mesh over all devices (of all processes) or the given ones."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """First axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(global_batch: int, mesh, what: str = 'config.train.batch_size') -> None:
  """A global batch must split evenly over the devices and the processes."""
  n_dev = mesh.shape[DATA_AXIS]
  if global_batch % n_dev:
    raise ValueError(
        f'{what}={global_batch} does not divide across the {n_dev} devices of the mesh; '
        f'use a multiple of {n_dev}.')
  n_proc = jax.process_count()
  if global_batch % n_proc:
    raise ValueError(f'{what}={global_batch} does not divide across {n_proc} processes.')


def global_batch_from_local(local: np.ndarray, mesh) -> jax.Array:
  """Assemble each process's slice of the batch into one global array sharded on `data`."""
  sharding = batch_sharding(mesh)
  global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local, global_shape)
