"""The training loop: input → jitted, sharded `train_step` → metrics, samples, checkpoints.

Sections follow the order of one run: Mesh and state / Checkpoint / Input / Update / Loop.
Logging, TensorBoard and sample grids come from process 0 only; every process saves and restores
checkpoints. SIGTERM or Ctrl-C saves a checkpoint and returns, so a killed run loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from ddpm_jax import images, input_pipeline, sampling, sharding
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment
from ddpm_jax.metric_writers import MetricWriter


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite."""


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)):
  """Yields a dict whose 'signal' entry is set when one of `signals` arrives (main thread only).

  The loop checks it between steps, checkpoints and returns, instead of dying mid-step.
  """
  received = {'signal': None}
  previous = {}

  def handler(signum, frame):
    del frame
    received['signal'] = signum

  try:
    for s in signals:
      try:
        previous[s] = signal.signal(s, handler)
      except ValueError:  # Not the main thread: leave the default handlers.
        pass
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _save_config(config, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _sample_grid(experiment, sample_fn, state, step: int, workdir: str, writer) -> str | None:
  """A grid of samples from the EMA parameters, to `workdir/samples/` and TensorBoard."""
  cfg = experiment.config
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed + 1), step)
  x = sampling.generate(sample_fn, state.ema_params, key, cfg.train.num_sample_grid,
                        cfg.train.num_sample_grid, progress=False)
  if jax.process_index() != 0:
    return None
  grid = images.make_grid(x)
  writer.write_image(step, 'samples_ema', grid)
  return images.save_png(os.path.join(workdir, 'samples', f'train_step{step:08d}.png'), grid)


def train_and_evaluate(config, workdir: str, experiment: Experiment | None = None,
                       progress: bool = True) -> dict:
  """Trains `config` in `workdir` up to `config.train.num_steps`, resuming from its newest
  checkpoint. Returns a summary dict (final step, last loss, images/s, paths)."""
  is_main = jax.process_index() == 0
  tcfg = config.train

  # Mesh and state.
  experiment = experiment or Experiment.from_config(config)
  mesh = experiment.mesh
  sharding.check_divisible(tcfg.batch_size, mesh)
  checkpointer = Checkpointer(workdir, max_to_keep=tcfg.keep_checkpoints)
  state, resumed = experiment.restore_or_init(checkpointer)
  start_step = int(state.step)
  if is_main:
    _save_config(config, workdir)
    print(f'Model: {experiment.num_params():,} parameters; devices: {mesh.size} '
          f'({jax.devices()[0].platform}); processes: {jax.process_count()}; '
          f'global batch {tcfg.batch_size}.', flush=True)
    if resumed:
      print(f'Resuming from step {start_step}', flush=True)

  # Input.
  batches = input_pipeline.create_train_iterator(
      config.data, tcfg.batch_size, tcfg.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count())

  # Update.
  train_step = experiment.jitted_train_step()
  grid_fn = None
  if tcfg.sample_every > 0:
    grid_fn = sampling.make_sample_fn(experiment, tcfg.num_sample_grid)

  writer = MetricWriter(workdir)
  summary = {'workdir': workdir, 'start_step': start_step, 'samples': []}
  window_losses, window_start = [], time.perf_counter()
  steps_in_window = 0
  pending = None  # (step, metrics) of the previous step, fetched one step late.
  last_metrics = {}

  def consume(step_done: int, metrics) -> None:
    nonlocal window_start, steps_in_window, last_metrics
    metrics = jax.device_get(metrics)
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      raise NonFiniteLossError(
          f'Loss is {loss} at step {step_done}. Training stopped; the newest checkpoint '
          f'({checkpointer.latest_step()}) in {checkpointer.directory} is untouched. Lower '
          f'config.optim.lr or check the data.')
    window_losses.append(loss)
    last_metrics = {k: float(v) for k, v in metrics.items()}
    if step_done % tcfg.log_every == 0 or step_done == tcfg.num_steps:
      elapsed = time.perf_counter() - window_start
      steps_per_sec = steps_in_window / elapsed if elapsed > 0 else float('nan')
      scalars = {'train/loss': float(np.mean(window_losses)),
                 'train/grad_norm': last_metrics['grad_norm'], 'train/lr': last_metrics['lr'],
                 'perf/steps_per_sec': steps_per_sec,
                 'perf/images_per_sec': steps_per_sec * tcfg.batch_size}
      writer.write_scalars(step_done, scalars)
      summary.update(loss=scalars['train/loss'], steps_per_sec=steps_per_sec)
      window_losses.clear()
      window_start, steps_in_window = time.perf_counter(), 0

  bar = tqdm(total=tcfg.num_steps, initial=start_step, desc='train', unit='step',
             disable=not (progress and is_main), dynamic_ncols=True, mininterval=1.0)
  step = start_step
  stopped_by = None
  try:
    with stop_on_signals() as stop:
      while step < tcfg.num_steps:
        batch = sharding.global_batch_from_local(next(batches), mesh)
        state, metrics = train_step(state, batch)
        if pending is not None:
          consume(*pending)
        pending = (step + 1, metrics)
        step += 1
        steps_in_window += 1
        bar.update(1)
        if last_metrics:
          bar.set_postfix(loss=f'{last_metrics["loss"]:.4f}', refresh=False)

        if step % tcfg.checkpoint_every == 0 or step == tcfg.num_steps:
          consume(*pending)  # Never checkpoint a state whose loss was not finite.
          pending = None
          checkpointer.save(step, state)
        if grid_fn is not None and (step % tcfg.sample_every == 0 or step == tcfg.num_steps):
          path = _sample_grid(experiment, grid_fn, state, step, workdir, writer)
          if path:
            summary['samples'].append(path)
            bar.write(f'step {step}: sample grid {path}')
        if stop['signal'] is not None and step < tcfg.num_steps:
          stopped_by = signal.Signals(stop['signal']).name
          if pending is not None:
            consume(*pending)
            pending = None
          checkpointer.save(step, state, force=True)
          bar.write(f'{stopped_by} received: saved checkpoint at step {step}; rerun the same '
                    f'command to resume.')
          break
      if pending is not None:
        consume(*pending)
  finally:
    bar.close()
    checkpointer.close()
    writer.close()

  summary.update(final_step=step, stopped_by=stopped_by,
                 images_per_sec=summary.get('steps_per_sec', float('nan')) * tcfg.batch_size)
  if is_main:
    logging.info('Training summary: %s', json.dumps(summary, default=str))
  return summary
