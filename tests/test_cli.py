"""Every user error reaches the terminal as one line, `error: ...`, from the command line itself;
tracebacks only for bugs or with DDPM_JAX_TRACEBACK=1."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from ddpm_jax import sharding, train
from test_multihost import shared_cache_dir, small_config, subprocess_env, write_small_config

FASHION = os.path.join(ROOT, 'configs', 'fashion_mnist.py')


def _main(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'ddpm_jax.main', *map(str, args)], cwd=ROOT,
                        env=env or dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                        text=True, timeout=600, stdin=subprocess.DEVNULL)


def _one_error_line(out) -> str:
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode != 0 and len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith('error: ') and 'Traceback' not in out.stderr
  return lines[0]


@pytest.mark.parametrize('args,expect', [
    (['--config.train.bach_size=3'],
     "--config.train.bach_size=3: the config has no key 'bach_size' (Did you mean "
     '"batch_size"'),
    (['--config.train.batch_size=abc'], "flag --config.train.batch_size=abc: invalid literal"),
    (['extra'], 'Unexpected arguments: extra'),
])
def test_bad_command_lines_are_one_line(tmp_path, args, expect):
  out = _main(f'--config={FASHION}', f'--workdir={tmp_path / "w"}', *args)
  assert expect in _one_error_line(out)
  assert not os.path.exists(tmp_path / 'w')


def test_config_errors_are_user_errors_and_value_errors():
  from ddpm_jax.errors import ConfigError, UserError
  assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


def test_bad_config_files_are_one_line(tmp_path):
  assert _one_error_line(_main(f'--config={tmp_path}/nope.py', f'--workdir={tmp_path}')) == (
      f'error: --config={tmp_path}/nope.py: config file not found')
  bad = tmp_path / 'bad.py'
  bad.write_text('def get_config(:\n')
  assert _one_error_line(_main(f'--config={bad}', f'--workdir={tmp_path}')) == (
      f'error: {bad}:1: SyntaxError: invalid syntax')
  bad.write_text('def get_config():\n  return undefined_name\n')
  assert _one_error_line(_main(f'--config={bad}', f'--workdir={tmp_path}')) == (
      f"error: {bad}:2: NameError: name 'undefined_name' is not defined")
  out = _main(f'--config={bad}', f'--workdir={tmp_path}',
              env=dict(os.environ, PYTHONPATH=ROOT, DDPM_JAX_TRACEBACK='1'))
  assert 'Traceback' in out.stderr and 'NameError' in out.stderr


def test_an_invalid_value_is_one_line_before_the_workdir_exists(tmp_path):
  out = _main(f'--config={FASHION}', f'--workdir={tmp_path / "w"}',
              '--config.data.dataset=nonexistent')
  assert "Unknown dataset 'nonexistent' (config.data.dataset)" in _one_error_line(out)
  assert not os.path.exists(tmp_path / 'w')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 4-step run of test_multihost's small config (4x4 images, ch 8) and its config file."""
  import jax
  from ddpm_jax.experiment import Experiment
  base = tmp_path_factory.mktemp('cli')
  config = small_config()
  exp = Experiment.from_config(config, mesh=sharding.make_mesh(jax.devices()[:1]))
  train.train_and_evaluate(config, str(base / 'run'), experiment=exp, progress=False)
  env = subprocess_env(shared_cache_dir(tmp_path_factory), '', XLA_FLAGS='')
  return write_small_config(base), base / 'run', env


def test_a_checkpoint_of_another_config_is_one_line(trained):
  config, work, env = trained
  out = _main(f'--config={config}', f'--workdir={work}', '--config.model.ch=16', env=env)
  line = _one_error_line(out)
  assert line.startswith(f'error: Checkpoint 4 in {work}/checkpoints was written with another')
  assert '(8,) in the checkpoint, (16,) in this config' in line
  assert f'config.model.ch: 8 in {work}/config.json, 16 now' in line


def test_a_workdir_in_use_is_one_line(trained):
  config, work, env = trained
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    from ddpm_jax import workdir_lock
    with open(workdir_lock.lock_path(str(work)), 'w') as f:
      import json, socket, time
      json.dump({'pid': sleeper.pid, 'host': socket.gethostname(),
                 'start': workdir_lock._process_start(sleeper.pid), 'since': time.time(),
                 'heartbeat': time.time(), 'what': 'training', 'command': 'the first trainer'},
                f)
    out = _main(f'--config={config}', f'--workdir={work}', env=env)
    assert f'is in use: training by pid {sleeper.pid} on ' in _one_error_line(out)
  finally:
    sleeper.kill()
    sleeper.wait()
    os.remove(workdir_lock.lock_path(str(work)))


def test_a_corrupt_checkpoint_is_one_warning_and_is_retrained(trained, tmp_path):
  config, work, env = trained
  copy = tmp_path / 'copy'
  shutil.copytree(work, copy)
  for path in glob.glob(str(copy / 'checkpoints' / '4' / 'state' / '**' / 'd' / '*'),
                        recursive=True):
    with open(path, 'r+b') as f:
      f.write(os.urandom(64))  # Garbage in the array data.
  out = _main(f'--config={config}', f'--workdir={copy}', env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resuming from step 2' in out.stdout
  warnings = [l for l in out.stderr.splitlines() if 'Checkpoint 4' in l]
  assert len(warnings) == 1 and 'is corrupt' in warnings[0] and 'corrupt_checkpoints' in (
      warnings[0])
  assert 'Traceback' not in out.stderr and 'Event loop is closed' not in out.stderr
  assert len(out.stderr.splitlines()) < 10, out.stderr[-3000:]
  assert sorted(os.listdir(copy / 'checkpoints')) == ['2', '4']
