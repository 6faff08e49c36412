"""Multi-process training on the CPU, as on a pod: 2 processes x 2 devices joined by
`jax.distributed` on 127.0.0.1 (`launch/multiprocess_local.sh`).

* 2 processes x 2 devices end with exactly (bitwise) the state of 1 process x 4 devices over
  the same global batches (each process reads its half of every batch) when the gradient sum
  has a fixed order (`train.exact_reduction`), and up to the all-reduce's rounding without;
* a SIGTERM to one process only stops both at the same step with a checkpoint, exit status 0,
  and the resumed run ends exactly where the uninterrupted one did.

Subprocesses share a persistent compilation cache (the first run compiles, later runs of the
same program load it) and compile with `--xla_backend_optimization_level=0` (LLVM -O0: the small
U-Net compiles several times faster on a CPU; every run here uses the same flags).
"""

import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, make_tiny_config
from ddpm_jax import sharding
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment

TESTS = os.path.join(ROOT, 'tests')
FAST_XLA = '--xla_backend_optimization_level=0'
NUM_STEPS = 16


def small_config():
  """`make_tiny_config` at 4x4 with one resolution level (conv_in, ResnetBlocks, the middle
  attention, conv_out; 11,505 parameters): everything the distributed code touches, and a
  train step that compiles in a few seconds."""
  c = make_tiny_config(image_size=4)
  c.model.ch_mult = (1,)
  c.model.attn_resolutions = (4,)
  return c


def write_small_config(directory) -> str:
  """A config file returning `small_config()`, for the launchers."""
  path = os.path.join(str(directory), 'small_config.py')
  with open(path, 'w') as f:  # Only conftest imported: nothing that could touch JAX early.
    f.write(f'import sys\nsys.path.insert(0, {TESTS!r})\n'
            'from conftest import make_tiny_config\n\n\n'
            f'{inspect.getsource(small_config)}\n\nget_config = small_config\n')
  return path


def shared_cache_dir(tmp_path_factory):
  """One persistent compilation cache for every subprocess of the test session."""
  return tmp_path_factory.getbasetemp() / 'jax_compilation_cache'


def subprocess_env(cache_dir, xla_flags=FAST_XLA, **extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags,
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  env.pop('DDPM_DISTRIBUTED', None)
  env.update(extra)
  return env


def launch(script, *args, env, wait=True, timeout=600):
  """Runs `launch/<script> args...`; returns (status, output), or the running Popen (its
  output goes to a file, so that it never blocks on a full pipe; see `finish`)."""
  cmd = ['bash', os.path.join(ROOT, 'launch', script), *map(str, args)]
  log = tempfile.TemporaryFile(mode='w+')
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          text=True, stdin=subprocess.DEVNULL)
  proc.log = log
  return finish(proc, timeout) if wait else proc


def finish(proc, timeout=600):
  proc.wait(timeout=timeout)
  proc.log.seek(0)
  out = proc.log.read()
  proc.log.close()
  return proc.returncode, out


def wait_for_metrics(workdir, lines: int, proc, timeout=300):
  """Waits until process 0 has logged `lines` steps to metrics.jsonl (training is running)."""
  path = os.path.join(str(workdir), 'metrics.jsonl')
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.exists(path) and sum(1 for _ in open(path)) >= lines:
      return
    if proc.poll() is not None:
      raise AssertionError(f'run ended before training started:\n{finish(proc)[1][-5000:]}')
    time.sleep(0.02)
  raise AssertionError('training did not start in time')


def final_state(workdir):
  """The newest checkpoint of `workdir` restored onto this process's first device."""
  exp = Experiment.from_config(small_config(), mesh=sharding.make_mesh(jax.devices()[:1]))
  ckpt = Checkpointer(str(workdir))
  state, step = ckpt.restore_latest_valid(exp.abstract_state())
  ckpt.close()
  return state, step


def assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The uninterrupted 2x2 and 1x4 runs of NUM_STEPS steps, started side by side."""
  base = tmp_path_factory.mktemp('multihost')
  config = write_small_config(base)
  cache = shared_cache_dir(tmp_path_factory)
  # Adam divides by sqrt(v) + eps: with the default eps = 1e-8 the gradients that are zero in
  # exact arithmetic (a conv bias followed by GroupNorm) are all-reduce rounding noise of
  # ~1e-9, which Adam turns into steps of ~lr, differently in each run. A larger eps keeps the
  # 2-vs-1-process comparison about the distribution, not about Adam's amplified rounding.
  # No dropout: exact_reduction draws dropout masks per device, the default path per global
  # batch, and the default-path run is compared with the exact 1-process run below.
  common = [f'train.num_steps={NUM_STEPS}', 'train.checkpoint_every=1000',
            'optim.adam_eps=0.001', 'model.dropout=0.0']
  overrides = common + ['train.exact_reduction=True']
  two = launch('multiprocess_local.sh', 2, 2, config, base / 'two', *overrides,
               env=subprocess_env(cache), wait=False)
  one = launch('local.sh', config, base / 'one', *overrides, wait=False, env=subprocess_env(
      cache, f'--xla_force_host_platform_device_count=4 {FAST_XLA}'))
  # The default path (GSPMD's all-reduce over gloo), against the same 1-process run.
  two_allreduce = launch('multiprocess_local.sh', 2, 2, config, base / 'two_allreduce',
                         *common, env=subprocess_env(cache), wait=False)
  results = {'two': finish(two), 'one': finish(one), 'two_allreduce': finish(two_allreduce)}
  for name, (rc, out) in results.items():
    assert rc == 0, f'{name}: {out[-5000:]}'
  return dict(base=base, config=config, cache=cache, overrides=overrides, **results)


def test_two_processes_train_exactly_like_one_process(runs):
  base = runs['base']
  out = runs['two'][1]
  assert 'devices: 4 (cpu; mesh 4 data x 1 fsdp); processes: 2' in out
  assert 'processes: 1' in runs['one'][1]
  # Process 0 alone logs: one metrics line per step, and process 1 printed no summary.
  lines = [json.loads(l) for l in open(base / 'two' / 'metrics.jsonl')]
  assert [l['step'] for l in lines] == list(range(1, NUM_STEPS + 1))
  assert 'Model:' not in open(base / 'two' / 'logs' / 'process_1.log').read()
  # train.exact_reduction: every loss and every bit of the final state are the same.
  one_lines = [json.loads(l) for l in open(base / 'one' / 'metrics.jsonl')]
  assert [l['train/loss'] for l in lines] == [l['train/loss'] for l in one_lines]
  two, step_two = final_state(base / 'two')
  one, step_one = final_state(base / 'one')
  assert step_two == step_one == NUM_STEPS
  assert_same_state(two, one)


def test_two_processes_with_the_default_all_reduce_match_up_to_rounding(runs):
  """Without exact_reduction the gradient all-reduce runs over gloo (a ring over the 4 devices)
  in one run and inside one process in the other, which sums in another order: about 1e-7
  relative per step. (Adam's eps is raised to 1e-3 in these runs: with 1e-8, gradients that are
  zero in exact arithmetic, such as a conv bias followed by GroupNorm, are ~1e-9 of rounding
  noise that Adam turns into steps of ~lr, differently in each run.)"""
  base = runs['base']
  lines = [json.loads(l) for l in open(base / 'two_allreduce' / 'metrics.jsonl')]
  one_lines = [json.loads(l) for l in open(base / 'one' / 'metrics.jsonl')]
  np.testing.assert_allclose([l['train/loss'] for l in lines],
                             [l['train/loss'] for l in one_lines], rtol=1e-5)
  two, _ = final_state(base / 'two_allreduce')
  one, _ = final_state(base / 'one')
  np.testing.assert_array_equal(two.step, one.step)
  np.testing.assert_array_equal(two.rng, one.rng)
  for x, y in zip(jax.tree.leaves((two.params, two.ema_params)),
                  jax.tree.leaves((one.params, one.ema_params)), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  for x, y in zip(jax.tree.leaves(two.opt_state), jax.tree.leaves(one.opt_state), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-5)


def _children(pid):
  """{pid: command line} of the child processes of `pid`."""
  out = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout
  children = {}
  for child in map(int, out.split()):
    try:
      with open(f'/proc/{child}/cmdline', 'rb') as f:
        children[child] = f.read().replace(b'\0', b' ').decode()
    except FileNotFoundError:
      pass
  return children


def test_sigterm_to_one_process_stops_all_at_one_step_and_resumes_exactly(runs):
  base, config, cache = runs['base'], runs['config'], runs['cache']
  work = base / 'killed'
  proc = launch('multiprocess_local.sh', 2, 2, config, work, *runs['overrides'],
                env=subprocess_env(cache), wait=False)
  wait_for_metrics(work, 2, proc)
  (pid1,) = [p for p, args in _children(proc.pid).items() if '--process_id=1' in args]
  os.kill(pid1, signal.SIGTERM)  # Only process 1 is told.
  rc, out = finish(proc)
  assert rc == 0, out[-5000:]
  assert 'signal to another process received: saved checkpoint at step' in out
  stopped = int(out.split('saved checkpoint at step ')[1].split(';')[0])
  assert 2 <= stopped < NUM_STEPS
  ckpt = Checkpointer(str(work))
  assert ckpt.preemption_steps() == [stopped] and ckpt.all_steps() == []
  ckpt.close()
  log1 = open(work / 'logs' / 'process_1.log').read()
  assert f'Process 1 stopping at step {stopped} (SIGTERM)' in log1

  rc, out = launch('multiprocess_local.sh', 2, 2, config, work, *runs['overrides'],
                   env=subprocess_env(cache))
  assert rc == 0, out[-5000:]
  assert f'Resuming from step {stopped}' in out
  resumed, step = final_state(work)
  assert step == NUM_STEPS
  assert_same_state(resumed, final_state(base / 'two')[0])
