"""One writer per workdir: a lock file naming its owner (pid, host, command).

A trainer (or a sweep member) holds `WORKDIR/writer.lock` from before it touches the workdir
until it exits; an evaluation job (`--mode=eval`) holds `WORKDIR/eval.lock`; with several JAX
processes, process 0 holds it for all (`acquire_for_run`). A second process that asks for the
same lock gets `WorkdirLockedError`, one line naming the owner. Readers (sampling, evaluation
reading checkpoints) take no lock: they open checkpoints read-only.

Stale locks, left by a process killed with SIGKILL or a machine that went down, are replaced
with a warning: on the same host when the owner's pid is no longer running (or is another
process now, by its start time); from another host when the owner's heartbeat, rewritten every
`HEARTBEAT_SECONDS` while it runs, is older than `STALE_AFTER_SECONDS`. Creating the lock is
atomic on a local or network filesystem (`O_CREAT | O_EXCL`); on object stores (`gs://`) it is
a best-effort check-then-write.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from ddpm_jax.errors import UserError

WRITER = 'writer'
EVAL = 'eval'
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0


class WorkdirLockedError(UserError):
  """Another live process holds the workdir's lock."""


def lock_path(workdir: str, name: str = WRITER) -> str:
  return str(epath.Path(workdir) / f'{name}.lock')


def _process_start(pid: int) -> str | None:
  """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid
  from the owner; None where /proc is not available."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_running(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    pass
  current = _process_start(pid)
  return start is None or current is None or current == start


def _own_record(token: str, what: str) -> dict:
  now = time.time()
  return {'pid': os.getpid(), 'host': socket.gethostname(), 'start': _process_start(os.getpid()),
          'since': now, 'heartbeat': now, 'token': token, 'what': what,
          'command': ' '.join(sys.argv)}


def _is_mine(record: dict) -> bool:
  return (record.get('pid') == os.getpid() and record.get('host') == socket.gethostname()
          and record.get('start') == _process_start(os.getpid()))


def stale_reason(record: dict | None, age: float) -> str | None:
  """Why the lock `record` (None: unreadable) whose file was last written `age` seconds ago
  belongs to no running process, or None if its owner may be running."""
  if record is None:
    return 'unreadable lock file' if age > 10 else None  # Else possibly being written now.
  if record.get('host') == socket.gethostname() and isinstance(record.get('pid'), int):
    if not _pid_running(record['pid'], record.get('start')):
      return f'pid {record["pid"]} is not running'
    return None
  silent = time.time() - float(record.get('heartbeat', 0))
  if silent > STALE_AFTER_SECONDS:
    return f'no heartbeat from host {record.get("host")} for {silent:.0f} s'
  return None


def describe_owner(record: dict | None) -> str:
  """E.g. 'training by pid 123 on node7 since 2026-01-02 03:04:05 (python -m ...)'."""
  if record is None:
    return 'a process (its lock file is being written or unreadable)'
  since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.get('since', 0)))
  return (f'{record.get("what", "a job")} by pid {record.get("pid")} on {record.get("host")} '
          f'since {since} ({record.get("command", "?")})')


def _read(path: str) -> tuple[dict | None, float]:
  """(record or None, age of the file in seconds); raises FileNotFoundError if absent."""
  p = epath.Path(path)
  text = p.read_text()
  age = time.time() - p.stat().mtime
  try:
    record = json.loads(text)
  except ValueError:
    record = None
  return (record if isinstance(record, dict) else None), age


def _create(path: str, record: dict) -> bool:
  """Writes `record` to `path` if no file is there; returns whether it did."""
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  if '://' in path:  # Object stores have no exclusive create: check, then write.
    if epath.Path(path).exists():
      return False
    epath.Path(path).write_text(json.dumps(record))
    return True
  try:
    with open(path, 'x') as f:  # O_CREAT | O_EXCL: atomic, also on network filesystems.
      f.write(json.dumps(record))
  except FileExistsError:
    return False
  return True


def _rewrite(path: str, record: dict) -> None:
  tmp = epath.Path(f'{path}.{os.getpid()}.tmp')
  tmp.write_text(json.dumps(record))
  tmp.replace(path)

@dataclasses.dataclass
class WorkdirLock:
  """A held lock; `release()` (or leaving the `with` block) removes the file if this object
  created it. A process that asks again for a lock it holds gets a handle that releases
  nothing (`owned=False`), so nested holders (a sweep member and its training) compose."""

  path: str
  owned: bool
  record: dict
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)
  _thread: threading.Thread | None = dataclasses.field(default=None, repr=False)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        current, _ = _read(self.path)
        if current is None or current.get('token') != self.record['token']:
          return  # Taken over (judged stale by another host): stop writing it.
        self.record['heartbeat'] = time.time()
        _rewrite(self.path, self.record)
      except OSError as e:
        logging.warning('Could not refresh the lock %s: %s', self.path, e)

  def __post_init__(self) -> None:
    if self.owned:
      self._thread = threading.Thread(target=self._beat, name='workdir-lock-heartbeat',
                                      daemon=True)
      self._thread.start()

  def release(self) -> None:
    if not self.owned:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    try:
      current, _ = _read(self.path)
    except FileNotFoundError:
      return
    if current is not None and current.get('token') == self.record['token']:
      epath.Path(self.path).unlink(missing_ok=True)
    self.owned = False

  def __enter__(self) -> 'WorkdirLock':
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str, name: str = WRITER, what: str = 'training') -> WorkdirLock:
  """Takes `workdir`'s lock `name` (creating the workdir), replacing a stale one with a warning.

  Raises `WorkdirLockedError` naming the owner and what it does if another live process holds
  it; `what` is this process's job, as the lock file tells others.
  """
  path = lock_path(workdir, name)
  record = _own_record(uuid.uuid4().hex, what)
  for _ in range(3):
    if _create(path, record):
      return WorkdirLock(path, True, record)
    try:
      current, age = _read(path)
    except FileNotFoundError:
      continue  # Released meanwhile: try again.
    if current is not None and _is_mine(current):
      return WorkdirLock(path, False, current)
    reason = stale_reason(current, age)
    if reason is None:
      raise WorkdirLockedError(
          f'{workdir} is in use: {describe_owner(current)} holds {path}. Wait for it to '
          f'finish or stop it; if that process is gone, delete {path}.')
    logging.warning('Replacing the stale lock %s of %s (%s).', path, describe_owner(current),
                    reason)
    epath.Path(path).unlink(missing_ok=True)
  raise WorkdirLockedError(f'Could not take the lock {path}: other processes keep taking it.')


def acquire_for_run(workdir: str, name: str = WRITER, what: str = 'training') -> WorkdirLock:
  """`acquire` for a job of one or several JAX processes: process 0 takes the lock (the
  others get a handle that releases nothing) and every process learns whether it could, so
  that all of them stop together when another run holds it."""
  lock, error = WorkdirLock(lock_path(workdir, name), False, {}), None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir, name, what)
    except WorkdirLockedError as e:
      error = e
  # Every process takes part in the broadcast; the others learn process 0's outcome.
  if jax.process_count() > 1 and int(
      multihost_utils.broadcast_one_to_all(np.int32(error is not None))) and not error:
    error = WorkdirLockedError(f'{workdir} is in use (see process 0).')
  if error is not None:
    raise error
  return lock


def check_not_held_by_other(workdir: str) -> None:
  """Raises `WorkdirLockedError` if another live process holds `workdir`'s writer lock (a
  guard for code about to write there without the lock, e.g. a checkpoint manager that
  would clean up the owner's saves in flight)."""
  path = lock_path(workdir)
  try:
    current, age = _read(path)
  except (FileNotFoundError, NotADirectoryError):
    return
  if (current is not None and _is_mine(current)) or stale_reason(current, age) is not None:
    return
  raise WorkdirLockedError(
      f'{workdir} is being written by {describe_owner(current)} ({path}); open its checkpoints '
      'read-only (Checkpointer(..., read_only=True)) to read them next to it.')
