"""Orbax checkpoints of the whole `TrainState` (params, EMA, optimizer state, step, RNG).

Two streams live in the workdir:
* `checkpoints/`: the permanent checkpoints, every `config.train.checkpoint_every` steps and at
  the end, the newest `config.train.keep_checkpoints` kept (what evaluation reads);
* `checkpoints_preempt/`: frequent checkpoints (every `config.train.preemption_every` steps, and
  when the run is stopped by SIGTERM/SIGINT), only the newest kept, so that a preempted or
  crashed run loses little.
Resuming and sampling take the newest readable checkpoint of either stream.

Saves are atomic (orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact. Every process takes part in saving and
restoring (each writes the shards it holds; the workdir must be on storage that every host sees:
a shared filesystem or `gs://`). The restore target carries the sharding, so a checkpoint
written on one device count / mesh restores onto any other.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

PERMANENT_DIR = 'checkpoints'
PREEMPTION_DIR = 'checkpoints_preempt'


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupt, or written by another config)."""


def abstract_like(tree):
  """Shape/dtype/sharding description of a pytree of arrays, the restore target for orbax."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _join(workdir: str, name: str) -> str:
  if '://' in workdir:  # gs://bucket/run: orbax writes there directly.
    return workdir.rstrip('/') + '/' + name
  return os.path.abspath(os.path.join(workdir, name))


def _manager(directory: str, max_to_keep: int | None, async_save: bool, read_only: bool):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep, create=not read_only,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only,
      read_only=read_only, save_interval_steps=0 if read_only else 1)
  return ocp.CheckpointManager(directory, options=options)


def _restore(manager, directory: str, step: int, target):
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(target))))
  except Exception as e:  # orbax raises many types; report them all the same way.
    raise CheckpointError(
        f'Checkpoint {step} in {directory} could not be restored: it is corrupt or was '
        f'written with a different model/optimizer config. Cause: {type(e).__name__}: {e}'
    ) from e
  return restored.state


class Checkpointer:
  """The permanent (`workdir/checkpoints`) and preemption (`workdir/checkpoints_preempt`)
  checkpoint streams of a run, over two `ocp.CheckpointManager`s."""

  def __init__(self, workdir: str, max_to_keep: int | None = 3, async_save: bool = True,
               read_only: bool = False):
    """`read_only`: for jobs that only restore (sampling, evaluation next to a running
    trainer): creates no directory and leaves orbax's temporary directories alone (a writer
    deletes those it finds when it starts, which would break a save in flight)."""
    self.directory = _join(workdir, PERMANENT_DIR)
    self.preemption_directory = _join(workdir, PREEMPTION_DIR)
    self._manager = _manager(self.directory, max_to_keep, async_save, read_only)
    self._preempt = _manager(self.preemption_directory, 1, async_save, read_only)

  def all_steps(self) -> list[int]:
    """Steps of the permanent checkpoints."""
    return sorted(self._manager.all_steps())

  def preemption_steps(self) -> list[int]:
    """Steps of the preemption stream (at most one once its saves have finished)."""
    return sorted(self._preempt.all_steps())

  def latest_step(self) -> int | None:
    """The newest step of either stream, or None."""
    steps = self.all_steps() + self.preemption_steps()
    return max(steps) if steps else None

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves `state` as permanent checkpoint `step` (asynchronously); returns whether it saved."""
    return self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)

  def save_preemption(self, step: int, state) -> bool:
    """Saves `state` in the preemption stream, replacing its previous checkpoint once written."""
    return self._preempt.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)

  def _stream_of(self, step: int):
    if step in self._manager.all_steps():
      return self._manager, self.directory
    if step in self._preempt.all_steps():
      return self._preempt, self.preemption_directory
    return self._manager, self.directory

  def restore(self, target, step: int | None = None):
    """Restores checkpoint `step` (default: the newest of either stream) shaped and sharded like
    `target`, a pytree of arrays or of `jax.ShapeDtypeStruct`s (any mesh or device count).

    Raises `CheckpointError` with the path and the cause when the checkpoint cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'No checkpoint in {self.directory} or {self.preemption_directory}.')
    return _restore(*self._stream_of(step), step, target)

  def restore_latest_valid(self, target):
    """Restores the newest readable checkpoint of either stream; falls back to older ones with
    a warning.

    Returns (state, step) or (None, None) when there is no checkpoint. If checkpoints exist but
    none can be read, raises the `CheckpointError` of the newest one.
    """
    # Newest first; at equal steps the permanent checkpoint first.
    candidates = sorted([(s, 1, self._manager, self.directory) for s in self.all_steps()] +
                        [(s, 0, self._preempt, self.preemption_directory)
                         for s in self.preemption_steps()],
                        key=lambda c: (c[0], c[1]), reverse=True)
    first_error = None
    for step, _, manager, directory in candidates:
      try:
        return _restore(manager, directory, step, target), step
      except CheckpointError as e:
        first_error = first_error or e
        logging.warning('%s Trying an older checkpoint.', e)
    if first_error is not None:
      raise first_error
    return None, None

  def wait(self) -> None:
    self._manager.wait_until_finished()
    self._preempt.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()
    self._preempt.close()


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a finished checkpoint in either stream. Reads only: creates
  nothing, and asks orbax only when a checkpoint folder exists."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (local paths and gs://)
  if not any(epath.Path(_join(workdir, d)).exists() for d in (PERMANENT_DIR, PREEMPTION_DIR)):
    return False
  checkpointer = Checkpointer(workdir, max_to_keep=None, async_save=False, read_only=True)
  try:
    return checkpointer.latest_step() is not None
  finally:
    checkpointer.close()
