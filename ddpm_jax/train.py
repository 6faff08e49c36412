"""The training loop: input → jitted, sharded `train_step` → metrics, samples, checkpoints.

Sections follow the order of one run: Inputs (checked) / Workdir / Mesh and state / Input /
Update / Loop.
Logging, TensorBoard and sample grids come from process 0 only; every process reads its own
slice of each batch and saves and restores checkpoints. SIGTERM or Ctrl-C saves a checkpoint
(in the preemption stream, see `ddpm_jax.checkpointing`) and returns once it is written, so a
killed run loses nothing; with several processes they first agree on the step to stop at
(`distributed.StopAgreement`), so a signal that reaches one host stops all of them together.

The config, the data and the evaluation weights are checked before the workdir is touched; the
workdir is then locked (`ddpm_jax.workdir_lock`: one trainer at a time). Before every save the
updated state is checked (finite, and a finite loss on the step's batch), so the newest
checkpoint is never a diverged state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from ddpm_jax import (checkpointing, data, distributed, generation, image_files, saved_config,
                      sharding, workdir_lock)
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.errors import UserError
from ddpm_jax.evaluators import results
from ddpm_jax.evaluators.suite import Suite, reached
from ddpm_jax.experiment import Experiment
from ddpm_jax.interop import diffusers as hf_interop
from ddpm_jax.metric_writers import MetricWriter


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or infinite, or an update diverged (nothing of it was saved)."""


@contextlib.contextmanager
def handling_signals(handler):
  """Runs the block with `handler(signum, frame)` for SIGTERM and SIGINT (main thread only;
  elsewhere the handlers stay), then restores the previous handlers."""
  previous = {}
  try:
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        previous[s] = signal.signal(s, handler)
      except ValueError:  # Not the main thread: leave the default handlers.
        pass
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler set outside Python.


@contextlib.contextmanager
def signals_deferred(signals=(signal.SIGTERM, signal.SIGINT)):
  """Holds `signals` back while the block runs (a short write that must not be cut)."""
  old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _diverged(what: str, checkpointer) -> NonFiniteLossError:
  return NonFiniteLossError(
      f'{what}; training stopped and saved nothing of it. The newest checkpoint '
      f'({checkpointer.latest_step()}) in {checkpointer.directory} is untouched: lower '
      'config.optim.lr (or raise config.optim.warmup_steps), or check the data, and rerun to '
      'resume from it.')


def _check_state(check_fn, state, batch, step: int, checkpointer) -> None:
  """Raises `NonFiniteLossError` unless the updated `state` is finite with a finite loss on the
  step's `batch` (run before any save: no checkpoint is a diverged state)."""
  finite, loss = jax.device_get(check_fn(state, batch))
  if not (bool(finite) and math.isfinite(float(loss))):
    what = 'non-finite parameters' if not bool(finite) else f'a loss of {float(loss)}'
    raise _diverged(f'The update of step {step} diverged ({what} after it)', checkpointer)


def _sampling_experiment(experiment: Experiment) -> Experiment:
  """The experiment to sample grids with: a pure data-parallel mesh over the same devices, on
  which the parameters are replicated (sampling needs every parameter on every device)."""
  if experiment.mesh.shape['fsdp'] == 1:
    return experiment
  return dataclasses.replace(experiment,
                             mesh=sharding.make_mesh(experiment.mesh.devices.flatten()))


def _replicated_ema_params(experiment, state):
  """The EMA parameters on every device of the (data-parallel) sampling mesh."""
  params = state.ema_params
  repl = sharding.replicated(experiment.mesh)
  if any(leaf.sharding != repl for leaf in jax.tree.leaves(params)):  # FSDP-sharded: gather.
    params = jax.jit(lambda x: x, out_shardings=repl)(params)
  return params


def _evaluate(suite: Suite, state, step: int, n: int, final: bool, writer) -> str | None:
  """Training-time evaluation: the evaluators whose `every` this dispatch of `n` steps reached
  (all at the `final` step), at their training-time sizes; returns the line to print."""
  due = suite.due(step, n, final)
  if not due:
    return None
  row = suite.evaluate(_replicated_ema_params(suite.experiment, state), step, due)
  if jax.process_index() != 0:
    return None
  with signals_deferred():  # A signal (to the final evaluation) arrives after the row is whole.
    return results.record(suite.workdir, row, writer)


def _sample_grid(experiment, sample_fn, state, step: int, workdir: str, writer) -> str | None:
  """A grid of samples from the EMA parameters, to `workdir/samples/` and TensorBoard."""
  cfg = experiment.config
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed + 1), step)
  params = _replicated_ema_params(experiment, state)
  x = generation.generate(sample_fn, params, key, cfg.train.num_sample_grid,
                          cfg.train.num_sample_grid, progress=False)
  if jax.process_index() != 0:
    return None
  grid = image_files.make_grid(x)  # Once, for TensorBoard and the (upscaled) PNG.
  writer.write_image(step, 'samples_ema', grid)
  return image_files.save_png(os.path.join(workdir, 'samples', f'train_step{step:08d}.png'),
                              image_files.upscale(grid))


def train_and_evaluate(config, workdir: str, experiment: Experiment | None = None,
                       progress: bool = True, init_from: str | None = None,
                       final_eval: bool = False) -> dict:
  """Trains `config` in `workdir` up to `config.train.num_steps`, resuming from its newest
  checkpoint. Returns a summary dict (final step, last loss, images/s, paths).

  `init_from`: a diffusers model (folder or Hub id, `ddpm_jax.interop.diffusers`) whose
  weights start a fine-tune as params and EMA params, saved as checkpoint 0; ignored (with a
  message) when the workdir already holds a checkpoint, which is resumed.

  Evaluators with `every` > 0 run on their schedule and at the final step, where `final_eval`
  (a sweep member's final evaluation) runs all of `config.evals`, at training-time sizes.

  Holds the workdir's writer lock while it runs (a caller that holds it already, such as a
  sweep member, keeps it)."""
  tcfg = config.train

  # Inputs, checked before the workdir is touched: config, data, evaluation weights.
  experiment = experiment or Experiment.from_config(config)
  mesh = experiment.mesh
  sharding.check_divisible(tcfg.batch_size, mesh, grad_accum_steps=tcfg.grad_accum_steps)
  # (params, folder) of --init_from, read and checked before anything is written.
  imported = None
  if init_from and not checkpointing.has_checkpoint(workdir):
    imported = hf_interop.load_params(init_from, config, experiment.abstract_state().params)
  # No data is needed when no step is to run (e.g. an import with num_steps=0).
  source = data.open_source(config.data) if tcfg.num_steps > 0 else None
  if source is not None:
    data.check_labels(source, config.model.num_classes)
  sample_experiment = _sampling_experiment(experiment)
  suite = Suite(config, sample_experiment, workdir, job=False, scheduled=not final_eval,
                progress=False)
  suite.check_inputs()

  # The workdir: one trainer at a time.
  with workdir_lock.acquire_for_run(workdir, what='training'):
    return _train(config, workdir, experiment, source, sample_experiment, suite, progress,
                  imported, init_from)


def _train(config, workdir: str, experiment: Experiment, source, sample_experiment, suite: Suite,
           progress: bool, imported, init_from: str | None) -> dict:
  """`train_and_evaluate` once its inputs are checked and the workdir is locked."""
  is_main = jax.process_index() == 0
  tcfg = config.train
  mesh = experiment.mesh

  # Mesh and state.
  checkpointer = Checkpointer(workdir, max_to_keep=tcfg.keep_checkpoints, config=config)
  if imported is not None:
    layout = experiment.abstract_state().params
    state, resumed = experiment.init_state(hf_interop.place(imported[0], layout)), False
    checkpointer.save(0, state)
  else:  # The newest readable checkpoint (corrupt newer ones are set aside), or a fresh state.
    state, _ = checkpointer.restore_latest_valid(experiment.abstract_state(),
                                                 set_aside_corrupt=True)
    resumed = state is not None
    state = state if resumed else experiment.init_state()
  start_step = int(state.step)
  if is_main:
    saved_config.save(config, workdir)
    mesh_desc = ' x '.join(f'{n} {a}' for a, n in mesh.shape.items())
    print(f'Model: {experiment.num_params():,} parameters; devices: {mesh.size} '
          f'({jax.devices()[0].platform}; mesh {mesh_desc}); processes: {jax.process_count()}; '
          f'global batch {tcfg.batch_size}.', flush=True)
    if resumed:
      print(f'Resuming from step {start_step}' + (
          f' (the workdir holds a checkpoint: --init_from={init_from} is not used)'
          if init_from else ''), flush=True)
    elif imported is not None:
      print(f'Starting from {imported[1].unet_dir} (--init_from={init_from}): its weights as '
            'params and EMA params, a fresh optimizer; saved as checkpoint 0.', flush=True)

  # Input (none needed when no step is left, e.g. an import with num_steps=0).
  batches = None if start_step >= tcfg.num_steps else data.create_train_iterator(
      config.data, tcfg.batch_size, tcfg.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_classes=int(config.model.num_classes), source=source)

  # Update.
  train_step = experiment.jitted_train_step()
  k_dispatch = int(tcfg.steps_per_dispatch)
  multi_step = experiment.jitted_train_step(k_dispatch) if k_dispatch > 1 else None
  check_fn = experiment.jitted_state_check()
  grid_fn = (generation.make_sample_fn(sample_experiment, tcfg.num_sample_grid)
             if tcfg.sample_every > 0 else None)
  agreement = distributed.StopAgreement(mesh)

  writer = MetricWriter(workdir)
  summary = {'workdir': workdir, 'start_step': start_step, 'samples': []}
  window_losses, window_start = [], time.perf_counter()
  steps_in_window = 0
  pending = None  # (first step, metrics, n) of the previous dispatch, fetched one late.
  last_metrics = {}

  def consume(step_done: int, metrics) -> None:
    """The metrics of one step: the loss checked, TensorBoard every `log_every` steps."""
    nonlocal window_start, steps_in_window, last_metrics
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      raise _diverged(f'Loss is {loss} at step {step_done}', checkpointer)
    window_losses.append(loss)
    last_metrics = {k: float(v) for k, v in metrics.items()}
    if step_done % tcfg.log_every == 0 or step_done == tcfg.num_steps:
      elapsed = time.perf_counter() - window_start
      steps_per_sec = steps_in_window / elapsed if elapsed > 0 else float('nan')
      scalars = {'train/loss': float(np.mean(window_losses)),
                 'train/grad_norm': last_metrics['grad_norm'], 'train/lr': last_metrics['lr'],
                 'perf/steps_per_sec': steps_per_sec,
                 'perf/images_per_sec': steps_per_sec * tcfg.batch_size}
      # The objective's parts (hybrid: mse and vlb), as of the last step of the window.
      scalars.update({f'train/{k}': v for k, v in last_metrics.items()
                      if k not in ('loss', 'grad_norm', 'lr')})
      writer.write_scalars(step_done, scalars)
      summary.update(loss=scalars['train/loss'], steps_per_sec=steps_per_sec)
      window_losses.clear()
      window_start, steps_in_window = time.perf_counter(), 0

  bar = tqdm(total=tcfg.num_steps, initial=start_step, desc='train', unit='step',
             disable=not (progress and is_main), dynamic_ncols=True, mininterval=1.0)
  step = start_step
  stopped_by = None

  def consume_dispatch(first: int, metrics, n: int) -> None:
    """Metrics of one dispatch of `n` steps from step `first`, fetched late (stacked if n > 1)."""
    metrics = jax.device_get(metrics)
    for i in range(n):
      consume(first + i, metrics if n == 1 else {k: v[i] for k, v in metrics.items()})

  def checked(save_fn) -> bool:
    """Saves the updated state once it, and the loss before its update, proved finite."""
    nonlocal pending
    if pending is not None:
      consume_dispatch(*pending)
      pending = None
    last = batch if n == 1 else sharding.global_batch_from_local(local[-1], mesh)
    _check_state(check_fn, state, last, step, checkpointer)
    return save_fn(step, state)

  try:
    # Set by SIGTERM / SIGINT (main thread only): the loop checkpoints and returns between steps
    # instead of dying mid-step.
    stop = {'signal': None}
    with handling_signals(lambda signum, _: stop.update(signal=signum)):
      while step < tcfg.num_steps:
        # k steps per dispatch (lax.scan) while k whole steps remain, else one at a time.
        n = k_dispatch if (k_dispatch > 1 and step + k_dispatch <= tcfg.num_steps) else 1
        local = [next(batches) for _ in range(n)]
        if n == 1:
          batch = sharding.global_batch_from_local(local[0], mesh)
          state, metrics = train_step(state, batch)
        else:
          stacked = jax.tree.map(lambda *xs: np.stack(xs), *local)
          batch = sharding.global_batch_from_local(stacked, mesh, stacked=True)
          state, metrics = multi_step(state, batch)

        if pending is not None:
          consume_dispatch(*pending)
        pending = (step + 1, metrics, n)
        step += n
        steps_in_window += n
        bar.update(n)
        if last_metrics:
          bar.set_postfix(loss=f'{last_metrics["loss"]:.4f}', refresh=False)

        saved = False
        if reached(tcfg.checkpoint_every, step, n) or step == tcfg.num_steps:
          saved = checked(checkpointer.save)
        elif reached(tcfg.preemption_every, step, n):
          saved = checked(checkpointer.save_preemption)
        if grid_fn is not None and (reached(tcfg.sample_every, step, n)
                                    or step == tcfg.num_steps):
          path = _sample_grid(sample_experiment, grid_fn, state, step, workdir, writer)
          if path:
            summary['samples'].append(path)
            bar.write(f'step {step}: sample grid {path}')
        line = _evaluate(suite, state, step, n, False, writer) if step < tcfg.num_steps else None
        if line:
          bar.write(line)
        # Every process asks every step, so that all of them stop at the same step.
        if agreement.should_stop(stop['signal'] is not None) and step < tcfg.num_steps:
          stopped_by = (signal.Signals(stop['signal']).name if stop['signal'] is not None
                        else 'signal to another process')
          if not saved:
            checked(checkpointer.save_preemption)
          checkpointer.wait()  # Durable before the message: a SIGKILL may follow at once.
          if is_main:
            bar.write(f'{stopped_by} received: saved checkpoint at step {step}; rerun the same '
                      f'command to resume.')
          else:
            logging.warning('Process %d stopping at step %d (%s).', jax.process_index(), step,
                            stopped_by)
          break
      if pending is not None:
        consume_dispatch(*pending)
    # The final evaluation, once its checkpoint is durable, with the caller's signal handlers: a
    # run killed during it evaluates it when rerun.
    if 0 < step == tcfg.num_steps and step not in results.evaluated_steps(workdir):
      checkpointer.wait()
      line = _evaluate(suite, state, step, 1, True, writer)
      if line:
        bar.write(line)
  finally:
    bar.close()
    if batches is not None:
      batches.close()  # Stops the input threads and worker processes.
    checkpointer.close()
    writer.close()

  summary.update(final_step=step, stopped_by=stopped_by,
                 images_per_sec=summary.get('steps_per_sec', float('nan')) * tcfg.batch_size)
  if is_main:
    logging.info('Training summary: %s', json.dumps(summary, default=str))
  return summary
