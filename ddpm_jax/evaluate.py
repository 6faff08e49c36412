"""The `--mode=eval` job: follows a training run's checkpoints and evaluates each one once.

It runs the evaluators of `config.evals` at their `--mode=eval` sizes (`ddpm_jax.evaluators`)
on the EMA parameters and prints the protocol line first. Its inputs (splits, Inception
weights) are checked before any work; it holds the workdir's `eval.lock`; finished steps are
kept in `eval_state.json`, so that a killed job resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import jax

from ddpm_jax import image_files, sharding, workdir_lock
from ddpm_jax.checkpointing import Checkpointer, CheckpointError, CheckpointMismatchError
from ddpm_jax.evaluators import results
from ddpm_jax.evaluators.suite import Suite
from ddpm_jax.experiment import Experiment, imported_params

STATE_NAME = 'eval_state.json'


def eval_job(config, workdir: str, experiment: Experiment | None = None,
             progress: bool = True, init_from: str | None = None) -> list[dict]:
  """Evaluates every checkpoint of `workdir` once, newest last, then waits for new ones until
  the final step (`config.train.num_steps`) is done or no checkpoint arrived for
  `config.eval.timeout_seconds`; returns the rows it wrote to `eval_results.csv`.

  With `init_from` (a diffusers model, see `ddpm_jax.interop.diffusers`) and no checkpoint in
  the workdir, that model is evaluated once instead (as step 0) and the job ends."""
  # A data-parallel mesh: evaluation replicates the parameters whatever mesh trained them.
  experiment = experiment or Experiment.from_config(config, mesh=sharding.make_mesh())
  suite = Suite(config, experiment, workdir, job=True, progress=progress)
  suite.check_inputs()
  with workdir_lock.acquire_for_run(workdir, workdir_lock.EVAL, what='evaluation'):
    if jax.process_index() == 0:
      print(suite.protocol(), flush=True)
    params = imported_params(experiment, workdir, init_from, 'evaluating')
    if params is not None:
      return [_evaluate(suite, params, 0)]
    return _follow_checkpoints(config, workdir, experiment, suite)


def _evaluate(suite: Suite, params, step: int) -> dict:
  row = suite.evaluate(params, step)
  if jax.process_index() == 0:
    print(results.record(suite.workdir, row), flush=True)
  return row


def _follow_checkpoints(config, workdir, experiment, suite) -> list[dict]:
  """`eval_job` once its inputs are checked and its lock taken."""
  state_file = pathlib.Path(workdir, STATE_NAME)
  done = set(json.loads(state_file.read_text())['done'] if state_file.exists() else ())
  rows = []
  last_new = time.monotonic()
  while True:
    # Read-only: never clean up (or race with) the trainer's saves in flight.
    checkpointer = Checkpointer(workdir, read_only=True, config=config)
    for step in [s for s in checkpointer.all_steps() if s not in done]:
      try:
        state = checkpointer.restore(experiment.abstract_state(), step)
      except CheckpointMismatchError:
        raise  # The config is wrong for every checkpoint: skipping them would hide it.
      except CheckpointError as e:  # Deleted by the trainer's max_to_keep, or corrupt.
        logging.warning('Skipping checkpoint %d: %s', step, e)
        done.add(step)
        continue
      rows.append(_evaluate(suite, state.ema_params, step))
      done.add(step)
      if jax.process_index() == 0:  # Written whole, then renamed: a kill leaves no half file.
        text = json.dumps({'done': sorted(done)})
        image_files.write_atomic(str(state_file), lambda tmp: pathlib.Path(tmp).write_text(text))
      last_new = time.monotonic()
    checkpointer.close()
    if config.train.num_steps in done:
      break
    if time.monotonic() - last_new > config.eval.timeout_seconds:
      logging.warning('No new checkpoint in %s for %d s; stopping.', workdir,
                      config.eval.timeout_seconds)
      break
    time.sleep(config.eval.poll_seconds)
  return rows
