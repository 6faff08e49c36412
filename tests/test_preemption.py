"""Preemption: a real SIGTERM to a running `launch/local.sh` checkpoints, exits 0 and resumes to
exactly the uninterrupted result; the two checkpoint streams and which one a restore takes."""

import glob
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import sharding
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment
from test_multihost import (FAST_XLA, assert_same_state, final_state, finish, launch,
                            shared_cache_dir, small_config, subprocess_env, wait_for_metrics,
                            write_small_config)

NUM_STEPS = 40
# The devices and config of test_multihost's 1-process run: its compiled programs are reused
# from the shared compilation cache.
OVERRIDES = [f'train.num_steps={NUM_STEPS}', 'train.checkpoint_every=20',
             'train.preemption_every=7', 'train.log_every=1', 'optim.adam_eps=0.001']
XLA_FLAGS = f'--xla_force_host_platform_device_count=4 {FAST_XLA}'


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, tmp_path_factory):
  config = write_small_config(tmp_path)
  env = subprocess_env(shared_cache_dir(tmp_path_factory), XLA_FLAGS)
  full = launch('local.sh', config, tmp_path / 'full', *OVERRIDES, env=env, wait=False)
  killed_dir = tmp_path / 'killed'
  killed = launch('local.sh', config, killed_dir, *OVERRIDES, env=env, wait=False)
  wait_for_metrics(killed_dir, 1, killed)
  os.kill(killed.pid, signal.SIGTERM)  # local.sh execs python: this is the training process.
  rc, out = finish(killed)
  assert rc == 0, out[-5000:]
  assert 'SIGTERM received: saved checkpoint at step' in out
  stopped = int(out.split('saved checkpoint at step ')[1].split(';')[0])
  assert 1 <= stopped < NUM_STEPS, out[-3000:]
  ckpt = Checkpointer(str(killed_dir))
  assert ckpt.latest_step() == stopped
  if stopped < 7:  # The usual case: the signal's checkpoint is the only one.
    assert ckpt.preemption_steps() == [stopped] and ckpt.all_steps() == []
  ckpt.close()

  rc, out = finish(full)
  assert rc == 0, out[-5000:]
  ckpt = Checkpointer(str(tmp_path / 'full'))
  # Permanent every 20 steps and at the end; the preemption stream keeps its newest (35).
  assert ckpt.all_steps() == [20, 40] and ckpt.preemption_steps() == [35]
  ckpt.close()

  rc, out = launch('local.sh', config, killed_dir, *OVERRIDES, env=env)
  assert rc == 0, out[-5000:]
  assert f'Resuming from step {stopped}' in out
  resumed, step = final_state(killed_dir)
  assert step == NUM_STEPS
  assert_same_state(resumed, final_state(tmp_path / 'full')[0])


def _corrupt(step_dir):
  for path in glob.glob(os.path.join(step_dir, '**', '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'wb') as f:
        f.write(b'garbage')


def test_restore_takes_the_newest_of_both_streams(tmp_path):
  exp = Experiment.from_config(small_config(), mesh=sharding.make_mesh(jax.devices()[:1]))
  abstract = exp.abstract_state()

  def state_with_step(step):
    return jax.tree.map(lambda s: jnp.full(s.shape, step, s.dtype), abstract)

  ckpt = Checkpointer(str(tmp_path), max_to_keep=3, async_save=False)
  ckpt.save(2, state_with_step(2))
  ckpt.save_preemption(3, state_with_step(3))
  assert ckpt.all_steps() == [2] and ckpt.preemption_steps() == [3] and ckpt.latest_step() == 3
  state, step = ckpt.restore_latest_valid(abstract)
  assert step == 3 and int(state.step) == 3
  ckpt.save(4, state_with_step(4))
  state, step = ckpt.restore_latest_valid(abstract)
  assert step == 4 and int(state.step) == 4
  assert int(ckpt.restore(abstract, 3).step) == 3  # Either stream, by step.
  ckpt.save_preemption(5, state_with_step(5))
  ckpt.save_preemption(6, state_with_step(6))
  assert ckpt.preemption_steps() == [6]  # Only the newest preemption checkpoint is kept.
  ckpt.close()
  _corrupt(os.path.join(str(tmp_path), 'checkpoints_preempt', '6'))
  _corrupt(os.path.join(str(tmp_path), 'checkpoints', '4'))
  reader = Checkpointer(str(tmp_path), read_only=True)  # As an evaluator next to a trainer.
  state, step = reader.restore_latest_valid(abstract)
  reader.close()
  assert step == 2 and int(state.step) == 2
  np.testing.assert_array_equal(np.asarray(state.params['conv_in']['bias']), 2.0)
