"""Checkpoints: saves that do not happen are errors, a checkpoint of another config is one error
naming arrays and config fields, a corrupt one is one line, readers leave the trainer's saves
alone."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from ddpm_jax import saved_config, sharding
from ddpm_jax.checkpointing import Checkpointer, CheckpointError, CheckpointMismatchError
from ddpm_jax.experiment import Experiment
from test_multihost import small_config


def _experiment(config):
  return Experiment.from_config(config, mesh=sharding.make_mesh(jax.devices()[:1]))


def _state(abstract, value):
  return jax.tree.map(lambda s: jnp.full(s.shape, value, s.dtype), abstract)


def _save(workdir, config, steps):
  abstract = _experiment(config).abstract_state()
  ckpt = Checkpointer(str(workdir), async_save=False)
  for step in steps:
    ckpt.save(step, _state(abstract, step))
  ckpt.close()
  saved_config.save(config, str(workdir))


def test_a_declined_save_is_an_error(tmp_path):
  """orbax skips a step at or below its newest one and returns False; the trainer ignored that
  and reported a checkpoint that was never written."""
  abstract = _experiment(small_config()).abstract_state()
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.save(5, _state(abstract, 5))
  with pytest.raises(CheckpointError, match=r'Checkpoint 3 was not saved .* already holds step 5'):
    ckpt.save(3, _state(abstract, 3))
  ckpt.close()


def test_another_config_is_one_error_naming_arrays_and_fields(tmp_path):
  config = small_config()
  _save(tmp_path, config, [2, 4])
  wider = small_config()
  wider.model.ch = 16
  ckpt = Checkpointer(str(tmp_path), read_only=True, config=wider)
  with pytest.raises(CheckpointMismatchError) as e:
    ckpt.restore_latest_valid(_experiment(wider).abstract_state())  # No "older checkpoint".
  message = str(e.value)
  assert message.startswith(f'Checkpoint 4 in {tmp_path}/checkpoints was written with another')
  assert 'ema_params.conv_in.bias (8,) in the checkpoint, (16,) in this config' in message
  assert "config.model.ch: 8 in " in message and ', 16 now' in message
  assert '\n' not in message and 'more arrays' in message


def test_a_corrupt_checkpoint_is_one_line(tmp_path, caplog):
  config = small_config()
  _save(tmp_path, config, [2, 4])
  for path in glob.glob(str(tmp_path / 'checkpoints' / '4' / 'state' / '**' / 'd' / '*'),
                        recursive=True):  # The array data, truncated.
    with open(path, 'r+b') as f:
      f.truncate(10)
  abstract = _experiment(config).abstract_state()
  ckpt = Checkpointer(str(tmp_path), read_only=True)
  state, step = ckpt.restore_latest_valid(abstract)
  assert step == 2 and int(state.step) == 2
  (warning,) = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING'
                and 'Checkpoint 4' in r.getMessage()]
  assert 'is corrupt' in warning and 'Using checkpoint 2 instead' in warning
  assert '\n' not in warning and len(warning) < 600  # orbax's own text is a 60-line spec.
  with pytest.raises(CheckpointError, match='Checkpoint 4 .* is corrupt') as e:
    ckpt.restore(abstract, 4)
  assert '\n' not in str(e.value)
  assert os.path.isdir(tmp_path / 'checkpoints' / '4')  # A reader moves nothing.
