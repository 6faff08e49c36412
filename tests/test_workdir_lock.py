"""One writer per workdir: the lock file, its owner, stale locks, and the writers that check it."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import make_tiny_config
from ddpm_jax import train, workdir_lock
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.workdir_lock import WorkdirLockedError


@pytest.fixture
def other_process():
  """A live process that is not this one (the owner of a foreign lock)."""
  proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  yield proc
  proc.kill()
  proc.wait()


def _write_lock(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  now = time.time()
  record = dict({'host': socket.gethostname(), 'since': now, 'heartbeat': now, 'token': 'x',
                 'what': 'training', 'command': 'python -m ddpm_jax.main --workdir=elsewhere'},
                **record)
  with open(workdir_lock.lock_path(str(workdir)), 'w') as f:
    json.dump(record, f)


def test_lock_names_its_owner_and_nests_in_one_process(tmp_path):
  work = str(tmp_path / 'run')
  lock = workdir_lock.acquire(work)
  record = json.load(open(os.path.join(work, 'writer.lock')))
  assert record['pid'] == os.getpid() and record['host'] == socket.gethostname()
  assert record['what'] == 'training'
  inner = workdir_lock.acquire(work)  # The same process again (a sweep member's training).
  assert lock.owned and not inner.owned
  inner.release()
  assert os.path.exists(os.path.join(work, 'writer.lock'))
  lock.release()
  assert not os.path.exists(os.path.join(work, 'writer.lock'))
  with workdir_lock.acquire(work):  # Free again.
    pass


def test_a_live_owner_refuses_a_second_writer(tmp_path, other_process):
  work = str(tmp_path)
  _write_lock(work, pid=other_process.pid,
              start=workdir_lock._process_start(other_process.pid))
  with pytest.raises(WorkdirLockedError,
                     match=rf'is in use: training by pid {other_process.pid} on '):
    workdir_lock.acquire(work, what='evaluation')  # The owner's job is named, not ours.
  # A checkpoint writer that did not take the lock is refused too; a reader is not.
  with pytest.raises(WorkdirLockedError, match='open its checkpoints read-only'):
    Checkpointer(work)
  Checkpointer(work, read_only=True).close()
  assert workdir_lock.acquire(work, workdir_lock.EVAL).owned  # Another lock of the workdir.


def test_stale_locks_are_replaced(tmp_path, caplog):
  done = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  dead_pid = int(done.stdout)
  _write_lock(str(tmp_path), pid=dead_pid)
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert lock.owned
  assert f'pid {dead_pid} is not running' in caplog.text
  # Another host: its heartbeat decides.
  _write_lock(str(tmp_path), pid=1, host='elsewhere')
  with pytest.raises(WorkdirLockedError, match='on elsewhere'):
    workdir_lock.acquire(str(tmp_path))
  old = time.time() - workdir_lock.STALE_AFTER_SECONDS - 5
  _write_lock(str(tmp_path), pid=1, host='elsewhere', heartbeat=old)
  with workdir_lock.acquire(str(tmp_path)) as lock:
    assert lock.owned


def test_a_second_trainer_stops_before_touching_the_workdir(tmp_path, other_process):
  """Two trainers on one workdir used to both train (metrics twice, checkpoints of one seed
  under the other's config.json); the second now stops with the owner's name and writes
  nothing."""
  work = str(tmp_path)
  _write_lock(work, pid=other_process.pid,
              start=workdir_lock._process_start(other_process.pid))
  with pytest.raises(WorkdirLockedError, match=f'pid {other_process.pid}'):
    train.train_and_evaluate(make_tiny_config(), work, progress=False)
  assert sorted(os.listdir(work)) == ['writer.lock']
