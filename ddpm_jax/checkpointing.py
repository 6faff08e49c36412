"""Orbax checkpoints of the whole `TrainState` (params, EMA, optimizer state, step, RNG).

Saves are atomic (orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact. Every process takes part in saving and
restoring.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupt, or written by another config)."""


def abstract_like(tree):
  """Shape/dtype/sharding description of a pytree of arrays, the restore target for orbax."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """A thin wrapper around `ocp.CheckpointManager` for `workdir/checkpoints`."""

  def __init__(self, workdir: str, max_to_keep: int | None = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves `state` as checkpoint `step` (asynchronously); returns whether it saved."""
    return self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)

  def restore(self, target, step: int | None = None):
    """Restores checkpoint `step` (default: the latest) shaped and sharded like `target`.

    `target` is a pytree of arrays or of `jax.ShapeDtypeStruct`s. Raises `CheckpointError` with
    the path and the cause when the checkpoint cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'No checkpoint in {self.directory}.')
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(target))))
    except Exception as e:  # orbax raises many types; report them all the same way.
      raise CheckpointError(
          f'Checkpoint {step} in {self.directory} could not be restored: it is corrupt or was '
          f'written with a different model/optimizer config. Cause: {type(e).__name__}: {e}'
      ) from e
    return restored.state

  def restore_latest_valid(self, target):
    """Restores the newest readable checkpoint; falls back to older ones with a warning.

    Returns (state, step) or (None, None) when the directory holds no checkpoint. If checkpoints
    exist but none can be read, raises the `CheckpointError` of the newest one.
    """
    steps = self.all_steps()
    first_error = None
    for step in reversed(steps):
      try:
        return self.restore(target, step), step
      except CheckpointError as e:
        first_error = first_error or e
        logging.warning('%s Trying an older checkpoint.', e)
    if first_error is not None:
      raise first_error
    return None, None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
