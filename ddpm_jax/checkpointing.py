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

Readers (sampling, evaluation) open the streams read-only: they create nothing and leave
orbax's temporary directories alone (a writer deletes those it finds when it starts, which would
break the trainer's save in flight). A writer checks that no other live process holds the
workdir's lock (`ddpm_jax.workdir_lock`). Before restoring, the checkpoint's array metadata is
compared with the target: a checkpoint written with another model config is one
`CheckpointMismatchError` naming the arrays and config fields, never "corrupt". A checkpoint that
fails to restore is corrupt: readers skip it with a warning; the trainer moves it to
`WORKDIR/corrupt_checkpoints/` so that it neither hides nor blocks the step it retrains.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from ddpm_jax import saved_config, workdir_lock
from ddpm_jax.errors import UserError

PERMANENT_DIR = 'checkpoints'
PREEMPTION_DIR = 'checkpoints_preempt'
CORRUPT_DIR = 'corrupt_checkpoints'
_MAX_LISTED = 3  # Mismatched arrays named in a CheckpointMismatchError.


class CheckpointError(UserError, RuntimeError):
  """A checkpoint exists but cannot be restored (corrupt, or written by another config), or a
  save did not happen."""


class CheckpointMismatchError(CheckpointError):
  """A checkpoint's arrays do not fit the current config (written with another model/optimizer
  config); its message names the arrays and the config fields that differ."""


def _join(workdir: str, name: str) -> str:
  if '://' in workdir:  # gs://bucket/run: orbax writes there directly.
    return workdir.rstrip('/') + '/' + name
  return os.path.abspath(os.path.join(workdir, name))


def _drop_closed_loop_errors() -> None:
  """During and after a failed restore, TensorStore's callbacks keep reporting into the event
  loop that orbax closed, each an "Event loop is closed" traceback (hundreds for a large state,
  some at exit): from the first restore on, the process drops exactly those, as unraisable
  exceptions or (from TensorStore's threads) uncaught ones; every other exception still
  reaches the previous hook."""
  previous, previous_except = sys.unraisablehook, sys.excepthook
  if getattr(previous, 'drops_closed_loop_errors', False):
    return
  closed = lambda e: isinstance(e, RuntimeError) and 'Event loop is closed' in str(e)
  sys.unraisablehook = lambda u: None if closed(u.exc_value) else previous(u)
  sys.unraisablehook.drops_closed_loop_errors = True
  sys.excepthook = lambda t, e, tb: None if closed(e) else previous_except(t, e, tb)


@contextlib.contextmanager
def _quiet_orbax():
  """Silences, for the duration, what orbax and asyncio log on their own about a failed
  restore or a read-only directory (a traceback per array: "Task exception was never
  retrieved"; "Given directory is read only"): `CheckpointError` reports it once. The failed
  tasks are collected inside the window."""
  loggers = [logging.getLogger(n) for n in ('asyncio', 'absl')]
  levels = [l.level for l in loggers]
  for l in loggers:
    l.setLevel(logging.CRITICAL)
  # Installed before the restore: a failing one's first callbacks can fire before it raises.
  _drop_closed_loop_errors()
  try:
    yield
  finally:
    gc.collect()
    for l, level in zip(loggers, levels):
      l.setLevel(level)


def _manager(directory: str, max_to_keep: int | None, async_save: bool, read_only: bool):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep, create=not read_only,
      enable_async_checkpointing=async_save and not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only, save_interval_steps=0 if read_only else 1)
  with _quiet_orbax():
    return ocp.CheckpointManager(directory, options=options,
                                 item_handlers={'state': ocp.StandardCheckpointHandler()})


def _cause(e: BaseException, limit: int = 240) -> str:
  """The first line of an orbax/TensorStore error, shortened (their messages embed whole
  TensorStore specs, dozens of lines per array)."""
  text = str(e).strip().split('\n', 1)[0]
  text = text.split(' See full TensorStore details', 1)[0]
  return f'{type(e).__name__}: {text[:limit]}' + ('...' if len(text) > limit else '')


def _flat_shapes(tree) -> dict:
  """{'params.conv_in.kernel': ((3, 3, 1, 32), 'float32'), ...} of a pytree of arrays or of
  array metadata (dataclass fields and dict keys alike)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator='.'):
              (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def shape_differences(saved: dict, target: dict) -> list[str]:
  """The arrays whose shape or dtype differ between a checkpoint and the restore target, and
  those only one of them has, as 'name (shape) in the checkpoint, (shape) in this config'."""
  out = []
  for name in sorted(set(saved) | set(target)):
    a, b = saved.get(name), target.get(name)
    if a == b:
      continue
    show = lambda v: 'absent' if v is None else (f'{v[0]}' if v[1] == 'float32' else f'{v}')
    out.append(f'{name} {show(a)} in the checkpoint, {show(b)} in this config')
  return out


def _restore(manager, step: int, target, config=None, workdir: str = ''):
  """Restores `step` shaped like `target`: `CheckpointMismatchError` if its arrays do not fit
  (naming the fields in which `config` differs from `WORKDIR/config.json`), `CheckpointError`
  if it cannot be read."""
  with _quiet_orbax():
    try:
      diffs = shape_differences(_flat_shapes(manager.item_metadata(step)['state']),
                                _flat_shapes(target))
      if not diffs:
        return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, target)))).state
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
      raise CheckpointError(
          f'Checkpoint {step} in {manager.directory} is corrupt: {_cause(e)}') from e
  listed = '; '.join(diffs[:_MAX_LISTED]) + (
      f' (and {len(diffs) - _MAX_LISTED} more arrays)' if len(diffs) > _MAX_LISTED else '')
  fields = saved_config.state_field_differences(config, workdir) if config is not None else []
  why = '; the config differs from the one that wrote it in ' + '; '.join(fields) if fields else ''
  raise CheckpointMismatchError(
      f'Checkpoint {step} in {manager.directory} was written with another model/optimizer '
      f'config: {listed}{why}. Resume with the config that wrote it, or train in a new --workdir.')


def _agree_on_step(step: int) -> int:
  """The oldest of the steps the processes restored (they restore the same checkpoint unless
  one of them could not read its part of the newest)."""
  if jax.process_count() == 1:
    return step
  return int(np.min(multihost_utils.process_allgather(np.int32(step))))


class Checkpointer:
  """The permanent (`workdir/checkpoints`) and preemption (`workdir/checkpoints_preempt`)
  checkpoint streams of a run, over two `ocp.CheckpointManager`s."""

  def __init__(self, workdir: str, max_to_keep: int | None = 3, async_save: bool = True,
               read_only: bool = False, config=None):
    """`read_only`: for jobs that only restore (sampling, evaluation next to a running
    trainer; see the module docstring), which ignore `max_to_keep` and `async_save`.
    `config`, when given, lets a `CheckpointMismatchError` name the config fields that differ
    from `WORKDIR/config.json`."""
    if not read_only and jax.process_index() == 0:
      workdir_lock.check_not_held_by_other(workdir)
    self.workdir = workdir
    self.read_only = read_only
    self._config = config
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

  def _save(self, manager, step: int, state, force: bool) -> bool:
    saved = manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                         force=force)
    if not saved:
      newest = manager.latest_step()
      raise CheckpointError(
          f'Checkpoint {step} was not saved in {manager.directory}' + (
              ' (opened read-only).' if self.read_only else
              f': it already holds step {newest}. Was this workdir written by another run?'))
    return True

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves `state` as permanent checkpoint `step` (asynchronously; `wait()` makes it durable).
    Raises `CheckpointError` if orbax declines (the step or a newer one exists)."""
    return self._save(self._manager, step, state, force)

  def save_preemption(self, step: int, state) -> bool:
    """Saves `state` in the preemption stream, replacing its previous checkpoint once written."""
    return self._save(self._preempt, step, state, True)

  def _stream_of(self, step: int):
    only_preempted = step in self._preempt.all_steps() and step not in self._manager.all_steps()
    return self._preempt if only_preempted else self._manager

  def restore(self, target, step: int | None = None):
    """Restores checkpoint `step` (default: the newest of either stream) shaped and sharded like
    `target`, a pytree of arrays or of `jax.ShapeDtypeStruct`s (any mesh or device count).

    Raises `CheckpointMismatchError` when it was written with another model config and
    `CheckpointError` when it cannot be read, each naming the path and the cause.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'No checkpoint in {self.directory} or {self.preemption_directory}.')
    return _restore(self._stream_of(step), step, target, self._config, self.workdir)

  def _set_aside(self, directory, step: int) -> str:
    """Moves the corrupt checkpoint `directory/step` to `WORKDIR/corrupt_checkpoints/`."""
    dest_dir = epath.Path(_join(self.workdir, CORRUPT_DIR))
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem = f'{epath.Path(directory).name}-{step}'
    dest, n = dest_dir / stem, 1
    while dest.exists():
      n += 1
      dest = dest_dir / f'{stem}.{n}'
    if jax.process_index() == 0:
      epath.Path(directory, str(step)).rename(dest)
    return str(dest)

  def restore_latest_valid(self, target, set_aside_corrupt: bool = False):
    """Restores the newest readable checkpoint of either stream, skipping corrupt ones with a
    one-line warning each; with `set_aside_corrupt` (the trainer, which holds the workdir's
    lock), also moves them to `WORKDIR/corrupt_checkpoints/`, so that retraining saves those
    steps again and they take no kept slot.

    Returns (state, step) or (None, None) when there is no checkpoint. A checkpoint written
    with another config raises `CheckpointMismatchError` at once (older ones come from the
    same run); if checkpoints exist but none can be read, raises the newest one's error.
    """
    # Newest first; at equal steps the permanent checkpoint first.
    candidates = sorted([(s, 1, self._manager) for s in self.all_steps()] +
                        [(s, 0, self._preempt) for s in self.preemption_steps()],
                        key=lambda c: c[:2], reverse=True)
    failed, state, step = [], None, None
    for step, _, manager in candidates:
      try:
        state = _restore(manager, step, target, self._config, self.workdir)
        break
      except CheckpointMismatchError:
        raise
      except CheckpointError as e:
        failed.append((e, manager.directory, step))
    else:
      if failed:
        first = failed[0][0]
        raise CheckpointError(f'{first} No older checkpoint could be read either: move '
                              f'{self.directory} and {self.preemption_directory} away to '
                              'start again.') from first
      return None, None
    agreed = _agree_on_step(step)
    if agreed != step:  # Another process could not read this one: all take the older step.
      failed.append((CheckpointError(f'Checkpoint {step} is corrupt on another process.'),
                     self._stream_of(step).directory, step))
      step = agreed
      state = _restore(self._stream_of(step), step, target, self._config, self.workdir)
    for e, directory, corrupt_step in failed:
      if set_aside_corrupt and not self.read_only:
        dest = self._set_aside(directory, corrupt_step)
        logging.warning('%s Moved it to %s; using checkpoint %d.', e, dest, step)
      else:
        logging.warning('%s Using checkpoint %d instead.', e, step)
    if set_aside_corrupt and failed:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('ddpm_jax: corrupt checkpoints set aside')
      self._manager.reload()
      self._preempt.reload()
    return state, step

  def wait(self) -> None:
    """Blocks until the saves in flight are written (durable)."""
    self._manager.wait_until_finished()
    self._preempt.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()
    self._preempt.close()


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a finished checkpoint in either stream. Reads only: creates
  nothing, and asks orbax only when a checkpoint folder exists."""
  if not any(epath.Path(_join(workdir, d)).exists() for d in (PERMANENT_DIR, PREEMPTION_DIR)):
    return False
  with contextlib.closing(Checkpointer(workdir, read_only=True)) as checkpointer:
    return checkpointer.latest_step() is not None
