"""The training loop: resume is exact, SIGTERM checkpoints, NaN stops, outputs are written."""

import glob
import json
import os
import signal

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_config
from ddpm_jax import data, train
from ddpm_jax.checkpointing import Checkpointer, CheckpointError
from ddpm_jax.experiment import Experiment
from ddpm_jax.train_step import make_train_step


def _final_state(workdir, config):
  exp = Experiment.from_config(config)
  ckpt = Checkpointer(workdir)
  state, step = ckpt.restore_latest_valid(exp.abstract_state())
  ckpt.close()
  return state, step


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """4 steps in one go, with a sample grid at step 4."""
  workdir = str(tmp_path_factory.mktemp('full'))
  config = make_tiny_config()
  config.train.sample_every = 4
  summary = train.train_and_evaluate(config, workdir, progress=False)
  return workdir, config, summary


def test_uninterrupted_run_writes_checkpoints_logs_and_samples(uninterrupted):
  workdir, config, summary = uninterrupted
  assert summary['final_step'] == 4 and summary['stopped_by'] is None
  state, step = _final_state(workdir, config)
  assert step == 4 and int(state.step) == 4
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == [1, 2, 3, 4]
  assert all(np.isfinite(l['train/loss']) for l in lines)
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))
  (png,) = summary['samples']
  img = np.asarray(Image.open(png))
  # 4 grey 8x8 samples, 2x2 grid (22 px), written 8x larger (image_files.upscale's cap).
  assert img.shape == (8 * (2 + 2 * (8 + 2)), 8 * (2 + 2 * (8 + 2)))
  json.load(open(os.path.join(workdir, 'config.json')))


def test_resume_reaches_the_same_state(uninterrupted, tmp_path, capsys):
  full_dir, config, _ = uninterrupted
  config.train.sample_every = 0
  half = make_tiny_config()
  half.train.num_steps = 2
  train.train_and_evaluate(half, str(tmp_path), progress=False)
  capsys.readouterr()
  train.train_and_evaluate(config, str(tmp_path), progress=False)
  assert 'Resuming from step 2' in capsys.readouterr().out
  _assert_same_state(_final_state(str(tmp_path), config)[0], _final_state(full_dir, config)[0])


def test_sigterm_checkpoints_and_resumes_exactly(uninterrupted, tmp_path, monkeypatch):
  full_dir, config, _ = uninterrupted
  config.train.sample_every = 0
  config.train.checkpoint_every = 100  # Only the signal and the end save.
  real = data.create_train_iterator
  # "saved checkpoint" must come after the save is durable (a SIGKILL may follow at once).
  events = []
  real_wait, real_write = Checkpointer.wait, train.tqdm.write
  monkeypatch.setattr(Checkpointer, 'wait', lambda self: events.append('wait') or real_wait(self))
  monkeypatch.setattr(train.tqdm, 'write', lambda self, s, *a, **k: events.append(s) or
                      real_write(s, *a, **k))

  def killed_after_first_batch(*args, **kwargs):
    it = real(*args, **kwargs)
    for i, batch in enumerate(it):
      if i == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(data, 'create_train_iterator', killed_after_first_batch)
  summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
  assert summary['stopped_by'] == 'SIGTERM' and summary['final_step'] == 2
  message = [e for e in events if 'saved checkpoint at step 2' in e]
  assert message and 'wait' in events[:events.index(message[0])]
  ckpt = Checkpointer(str(tmp_path))
  assert ckpt.preemption_steps() == [2] and ckpt.all_steps() == []  # The preemption stream.
  monkeypatch.setattr(data, 'create_train_iterator', real)
  summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
  assert summary['start_step'] == 2 and summary['final_step'] == 4
  _assert_same_state(_final_state(str(tmp_path), config)[0], _final_state(full_dir, config)[0])


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
  config = make_tiny_config()
  real = data.create_train_iterator

  def nan_batches(*args, **kwargs):
    for batch in real(*args, **kwargs):
      yield np.full_like(batch, np.nan)

  monkeypatch.setattr(data, 'create_train_iterator', nan_batches)
  with pytest.raises(train.NonFiniteLossError, match='Loss is nan at step 1'):
    train.train_and_evaluate(config, str(tmp_path), progress=False)
  assert Checkpointer(str(tmp_path)).all_steps() == []


def _corrupt(step_dir):
  for path in glob.glob(os.path.join(step_dir, '**', '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'wb') as f:
        f.write(b'garbage')


def test_corrupt_checkpoint_falls_back_then_fails_clearly(uninterrupted, tmp_path):
  import shutil
  full_dir, config, _ = uninterrupted
  work = str(tmp_path / 'copy')
  shutil.copytree(full_dir, work)
  _corrupt(os.path.join(work, 'checkpoints', '4'))
  state, step = _final_state(work, config)
  assert step == 2 and int(state.step) == 2
  _corrupt(os.path.join(work, 'checkpoints', '2'))
  with pytest.raises(CheckpointError, match='is corrupt.*No older checkpoint could be read'):
    _final_state(work, config)


def test_a_corrupt_final_checkpoint_is_set_aside_and_saved_again(uninterrupted, tmp_path):
  """The newest checkpoint (the final step) truncated: rerunning retrains from the previous one
  and saves the final step again (orbax used to skip a step that exists, and the corrupt
  checkpoint stayed the newest, hiding or taking a kept slot)."""
  import shutil
  full_dir, _, _ = uninterrupted
  config = make_tiny_config()
  work = str(tmp_path / 'copy')
  shutil.copytree(full_dir, work)
  for path in glob.glob(os.path.join(work, 'checkpoints', '4', 'state', '**', 'd', '*'),
                        recursive=True):
    with open(path, 'r+b') as f:
      f.truncate(10)
  summary = train.train_and_evaluate(config, work, progress=False)
  assert summary['start_step'] == 2 and summary['final_step'] == 4
  assert sorted(os.listdir(os.path.join(work, 'checkpoints'))) == ['2', '4']
  assert os.listdir(os.path.join(work, 'corrupt_checkpoints')) == ['checkpoints-4']
  state, step = _final_state(work, config)
  assert step == 4
  _assert_same_state(state, _final_state(full_dir, config)[0])


def test_a_diverging_update_is_never_saved(tmp_path):
  """lr = 1e6 with a checkpoint every step: an update can leave finite parameters whose loss
  is already NaN. The checkpoint of that step used to be saved (and resuming from it diverged
  again at once); now every checkpoint left has a finite loss on its step's batch."""
  config = make_tiny_config()
  config.optim.lr = 1e6
  config.train.checkpoint_every = 1
  config.train.num_steps = 12
  with pytest.raises(train.NonFiniteLossError) as e:
    train.train_and_evaluate(config, str(tmp_path), progress=False)
  ckpt = Checkpointer(str(tmp_path), read_only=True)
  newest = ckpt.latest_step()
  assert newest is not None and f'newest checkpoint ({newest})' in str(e.value)
  exp = Experiment.from_config(config)
  state = ckpt.restore(exp.abstract_state(), newest)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  batch = data.create_train_iterator(config.data, 8, config.train.seed).get_batch(
      newest - 1)  # The batch of the newest checkpoint's step.
  step_fn = jax.jit(make_train_step(exp.model, exp.tx, exp.schedule, config))
  assert np.isfinite(float(step_fn(state, batch)[1]['loss']))


@pytest.mark.parametrize('field,value', [('data.dataset', 'nonexistent'), ('train.seed', -1)])
def test_bad_config_values_stop_before_the_workdir_is_written(tmp_path, field, value):
  config = make_tiny_config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=f'config.{field}'.replace('.', r'\.')):
    train.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  assert not os.path.exists(tmp_path / 'run')


def test_indivisible_batch_is_a_clear_error(tmp_path, monkeypatch):
  config = make_tiny_config(batch_size=6)
  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  with pytest.raises(ValueError, match='does not divide across 4 processes'):
    train.train_and_evaluate(config, str(tmp_path), progress=False)


def test_class_conditional_training_end_to_end(tmp_path):
  """Labels flow from the dataset to the label embedding: rows of classes in the batch (and the
  null label, from label dropout) are trained, rows of absent classes stay at their initial
  values; the guided sample grid is written; the hybrid objective's parts are logged."""
  config = make_tiny_config()
  config.diffusion.update(loss='hybrid', var_type='learned_range')
  config.model.num_classes = 10
  config.train.label_dropout = 0.5
  config.train.num_steps = 3
  config.train.sample_every = 3
  config.sample.guidance_scale = 2.0
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir, progress=False)
  assert summary['final_step'] == 3 and len(summary['samples']) == 1
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert all(l['train/vlb'] > 0 and l['train/mse'] > 0 for l in lines)
  lam_t = 1e-3 * config.diffusion.num_timesteps  # L_hybrid = mse + lambda T vlb (per term).
  assert all(l['train/loss'] == pytest.approx(l['train/mse'] + lam_t * l['train/vlb'], rel=1e-4)
             for l in lines)

  # Zero-initialised layers: the third step (batch 2) is the first whose gradient reaches the
  # label embedding (see test_objectives), so only its labels can have moved their rows.
  it = data.create_train_iterator(config.data, 8, config.train.seed, num_classes=10)
  seen = set(it.get_batch(2)['label'].tolist())
  exp = Experiment.from_config(config)
  init = np.asarray(exp.init_state().params['label_emb']['embedding'])
  final = np.asarray(_final_state(workdir, config)[0].params['label_emb']['embedding'])
  changed = {c for c in range(11) if not np.array_equal(init[c], final[c])}
  assert 10 in changed  # The null label (P(no dropout among 8 labels) = 1/256).
  assert changed - {10} <= seen and changed & seen
  assert len(seen) < 10  # Some class is absent, so the check above has teeth.


def test_several_steps_per_dispatch_match_one_at_a_time(uninterrupted, tmp_path):
  """train.steps_per_dispatch = 3 over 4 steps (one scan of 3, then a single step): the same
  losses and final parameters as one step per dispatch, checkpoints where the dispatches
  reach them, every step logged."""
  workdir, _, _ = uninterrupted
  config = make_tiny_config()
  config.train.steps_per_dispatch = 3
  config.train.sample_every = 4
  summary = train.train_and_evaluate(config, str(tmp_path), progress=False)
  assert summary['final_step'] == 4
  # checkpoint_every = 2: the dispatch of steps 1-3 reaches step 2 and saves at its end.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '4']
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  ref = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == [1, 2, 3, 4]
  np.testing.assert_allclose([l['train/loss'] for l in lines],
                             [l['train/loss'] for l in ref], rtol=1e-5)
  a, _ = _final_state(str(tmp_path), config)
  b, _ = _final_state(workdir, make_tiny_config())
  # The scan and the single step are compiled separately, so their gradients differ by float
  # rounding, which Adam's division by sqrt(nu) enlarges for near-zero gradients: atol is 1 %
  # of one step's largest update (lr = 1e-3).
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_class_count_of_a_folder_is_checked_before_the_workdir_is_touched(tmp_path):
  for name in ('cat', 'dog', 'owl'):
    (tmp_path / 'images' / name).mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / 'images' / name / '0.png')
  config = make_tiny_config()
  config.data.dataset, config.data.data_dir = 'folder', str(tmp_path / 'images')
  config.model.num_classes = 10
  with pytest.raises(data.DatasetError, match=r'num_classes=10 but the dataset has 3 classes '
                     r'\(cat, dog, owl\)'):
    train.train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  assert not (tmp_path / 'run').exists()
