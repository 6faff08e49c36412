"""Multi-process runs on JAX's own distributed runtime, and agreeing across processes to stop.

One program runs unchanged on one CPU, on a multi-host TPU pod slice or on a multi-node GPU
cluster: every process runs the same `python -m ddpm_jax.main ...`, calls `initialize()` first,
then sees every device of every process in `jax.devices()` (its own in `jax.local_devices()`).
On CPU, cross-process collectives use gloo.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from ddpm_jax import cli, sharding

ENV_VAR = 'DDPM_DISTRIBUTED'


def initialize(distributed: bool = False, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
  """Starts JAX's distributed runtime if asked to; call before any other JAX call.

  Asked to explicitly, with a `coordinator_address`, process count and process id (the CPU
  launcher `launch/multiprocess_local.sh` passes `--coordinator_address=127.0.0.1:PORT
  --num_processes=N --process_id=I`); or with `distributed` true or `DDPM_DISTRIBUTED=1` in the
  environment, leaving the arguments None for JAX to read from the cluster: Cloud TPU VM
  metadata on a pod slice, SLURM's variables under `srun` (one process per GPU), Open MPI,
  Kubernetes. Returns whether the runtime was started. Calling it twice is harmless.
  """
  if not (distributed or cli.env_flag(ENV_VAR) or coordinator_address):
    return False
  if jax.distributed.is_initialized():
    return True  # Already initialised (e.g. by a caller of train_and_evaluate).
  # Gloo is JAX's default for CPU collectives; set it explicitly so that a CPU run across
  # processes never falls back to "no collectives". Harmless on GPU and TPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)  # None: detected.
  logging.info('jax.distributed initialised: process %d of %d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


class StopAgreement:
  """Agrees across processes whether to stop, so that every process stops at the same step.

  A SIGTERM may reach one host of a pod, or reach the hosts at different times; a process that
  stopped alone would leave the others waiting in a collective forever. Each step every process
  calls `should_stop(local_flag)` (all of them, the same number of times); the local flags are
  combined with a max over all devices, dispatched asynchronously like the train step, and read
  one call later, so the host never waits for the device (the train step keeps running while the
  flag travels). Every process therefore gets the same answer at the same call, one step after
  the signal. With one process the local flag is returned at once, with no collective.
  """

  def __init__(self, mesh):
    self._multi = jax.process_count() > 1
    self._pending = None
    if self._multi:
      self._mesh = mesh
      self._sharding = sharding.batch_sharding(mesh)
      self._num_local = len(mesh.local_devices)
      self._any = jax.jit(lambda x: x.max(), out_shardings=sharding.replicated(mesh))

  def should_stop(self, local_flag: bool) -> bool:
    if not self._multi:
      return bool(local_flag)
    decided = False
    if self._pending is not None:
      decided = bool(np.asarray(self._pending))
    local = np.full((self._num_local,), int(bool(local_flag)), np.int32)
    flags = jax.make_array_from_process_local_data(
        self._sharding, local, (self._mesh.size,))
    self._pending = self._any(flags)
    return decided
