"""Run an ablation sweep: one training run (and a final quick evaluation) per sweep member.

    python -m ddpm_jax.sweep --config=configs/cifar10.py \
        --sweep=configs/sweeps/ddpm_table2.py --workdir=runs/table2 [--config.train.num_steps=N]

Each member trains in `WORKDIR/<name>` (the name lists the overrides that vary, see
`ddpm_jax.sweeps.name_members`) with the base config (`--config`, with any `--config.*`
overrides) plus its own overrides. `WORKDIR/sweep.json` lists the members and each member's
`sweep_member.json` its status: `running`, `done`, `failed` (with the error; after a diverged
loss, a result in an ablation, the sweep goes on with the next member, any other error stops
it) or `interrupted` (SIGTERM/Ctrl-C, in training — a checkpoint was saved — or in the final
evaluation; the sweep stops). Re-running the same command skips `done` members and resumes
the others from their newest checkpoint. When a member has trained, its final EMA parameters
are evaluated once (`eval.train_bpd_examples` test images for bits/dim and
`eval.train_num_samples` samples for FD-FMNIST / FID) into its `eval_results.csv`, unless
training already evaluated that step (`eval.eval_every`). `python -m ddpm_jax.report WORKDIR`
then tabulates and plots the sweep.

`--launcher` runs the members elsewhere: `print` prints one command per member (any
scheduler), `slurm` prints one `sbatch launch/slurm_gpu.sbatch` line per member and `tpu` one
`launch/tpu_pod.sh` line per member (each member then uses the whole pod slice or allocation).
Each printed command runs this module for one member (`--member=NAME`), so statuses, the final
evaluation and skip/resume work the same way there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from ddpm_jax import cli, runtime, sweeps

flags.DEFINE_string('sweep', None, 'Sweep file (configs/sweeps/*.py, defining get_sweep()).')
flags.DEFINE_string('workdir', None, 'Sweep directory: one workdir per member inside it.')
flags.DEFINE_enum('launcher', 'local', ['local', 'print', 'slurm', 'tpu'],
                  'local: run the members here, one after the other; print / slurm / tpu: '
                  'print one command per member instead.')
flags.DEFINE_multi_string('member', [], 'Run only these members (names as in sweep.json, or '
                          'indices); repeatable. Default: all.')
flags.DEFINE_bool('final_eval', True, 'Evaluate each member once after training.')
config_flags.DEFINE_config_file('config', None, 'Base config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'sweep', 'workdir'])
FLAGS = flags.FLAGS

SWEEP_JSON = 'sweep.json'
MEMBER_JSON = 'sweep_member.json'


def _write_json(path: str, obj) -> None:
  import jax
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)


def read_member(member_dir: str) -> dict:
  """The member's `sweep_member.json` (`{}` if it has not started)."""
  path = os.path.join(member_dir, MEMBER_JSON)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def plan(config, sweep_path: str) -> list[tuple[str, dict, object]]:
  """`(name, overrides, config)` per member, every member's config built and validated first,
  so that a typo in the sweep fails before any run starts."""
  from ddpm_jax import config_checks
  out = []
  for name, overrides in sweeps.name_members(sweeps.load_sweep(sweep_path)):
    member_config = sweeps.apply_overrides(config, overrides)
    try:
      config_checks.validate(member_config)
    except ValueError as e:
      raise sweeps.SweepError(f'Member {name}: {e}') from e
    out.append((name, overrides, member_config))
  return out


def select(members, wanted) -> list:
  """The members named (or indexed) in `wanted`; all of them when it is empty."""
  if not wanted:
    return list(members)
  names = [m[0] for m in members]
  out = []
  for w in wanted:
    if w in names:
      out.append(members[names.index(w)])
    elif w.isdigit() and int(w) < len(members):
      out.append(members[int(w)])
    else:
      raise sweeps.SweepError(f'No member {w!r}; the members are: {", ".join(names)}.')
  return out


def _evaluated_steps(member_dir: str) -> set[int]:
  import csv
  from ddpm_jax import evaluate
  path = os.path.join(member_dir, evaluate.CSV_NAME)
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    return {int(r['step']) for r in csv.DictReader(f) if (r.get('step') or '').isdigit()}


class Interrupted(Exception):
  """SIGTERM or SIGINT arrived outside the training loop (which handles them itself)."""


@contextlib.contextmanager
def signals_deferred(signals=(signal.SIGTERM, signal.SIGINT)):
  """Holds `signals` back while the block runs (a short write that must not be cut)."""
  old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def interrupt_on_signals(signals=(signal.SIGTERM, signal.SIGINT)):
  """Turns `signals` into an `Interrupted` exception while the block runs (main thread only),
  so that a member stopped outside its training loop, e.g. in its final evaluation, is
  recorded as interrupted instead of dying with its status left at `running`. The training
  loop installs its own handlers (checkpoint, then return) inside this block."""

  def handler(signum, frame):
    del frame
    raise Interrupted(signal.Signals(signum).name)

  previous = {}
  try:
    for s in signals:
      try:
        previous[s] = signal.signal(s, handler)
      except ValueError:  # Not the main thread.
        pass
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, signal.SIG_DFL if h is None else h)


def final_evaluation(config, member_dir: str, progress: bool = True) -> dict | None:
  """The quick evaluation (bits/dim on `eval.train_bpd_examples` test images, sample quality
  of `eval.train_num_samples` samples) of the newest checkpoint's EMA parameters, appended to
  `eval_results.csv`; None if that step was evaluated already or both sizes are 0."""
  from ddpm_jax import evaluate, sharding
  from ddpm_jax.checkpointing import Checkpointer
  from ddpm_jax.experiment import Experiment
  ev = config.eval
  if ev.train_bpd_examples <= 0 and ev.train_num_samples <= 0:
    return None
  checkpointer = Checkpointer(member_dir, max_to_keep=None, async_save=False, read_only=True)
  try:
    step = checkpointer.latest_step()
    if step is None or step in _evaluated_steps(member_dir):
      return None
    experiment = Experiment.from_config(config, mesh=sharding.make_mesh())
    state = checkpointer.restore(experiment.abstract_state(), step)
  finally:
    checkpointer.close()
  row = evaluate.Evaluator(experiment, member_dir).evaluate(
      state.ema_params, step, ev.train_bpd_examples, ev.train_num_samples, progress=progress)
  import jax
  if jax.process_index() == 0:
    with signals_deferred():  # A signal now arrives after the row is whole.
      evaluate.append_csv(os.path.join(member_dir, evaluate.CSV_NAME), row)
  return row


def run_member(name: str, overrides: dict, config, sweep_dir: str, final_eval: bool = True,
               progress: bool = True) -> str:
  """Trains (or resumes, or skips) one member, holding its workdir's lock; returns its status."""
  from ddpm_jax import evaluate, workdir_lock
  member_dir = os.path.join(sweep_dir, name)
  record = read_member(member_dir)
  if record.get('status') == 'done':
    print(f'[sweep] {name}: done, skipped', flush=True)
    return 'skipped'
  if final_eval:  # Before the training: the final evaluation's inputs exist.
    evaluate.check_inputs(config, config.eval.train_bpd_examples, config.eval.train_num_samples)
  lock = workdir_lock.acquire_for_run(member_dir, what=f'sweep member {name}')
  try:
    return _run_member(name, overrides, config, member_dir, record, final_eval, progress)
  finally:
    if lock is not None:
      lock.release()


def _run_member(name, overrides, config, member_dir, record, final_eval, progress) -> str:
  from ddpm_jax import train
  record = {'name': name, 'overrides': overrides, 'status': 'running',
            'seconds': float(record.get('seconds', 0.0)), 'attempts': record.get('attempts', 0) + 1}
  _write_json(os.path.join(member_dir, MEMBER_JSON), record)
  print(f'[sweep] {name}: training in {member_dir}', flush=True)
  t0 = time.perf_counter()

  def finish(status: str, **extra) -> str:
    record.update(status=status, seconds=round(record['seconds'] + time.perf_counter() - t0, 2),
                  **extra)
    _write_json(os.path.join(member_dir, MEMBER_JSON), record)
    print(f'[sweep] {name}: {status}' + (f' ({extra["error"]})' if 'error' in extra else ''),
          flush=True)
    return status

  try:
    with interrupt_on_signals():
      summary = train.train_and_evaluate(config, member_dir, progress=progress)
      if summary.get('stopped_by'):
        return finish('interrupted', error=f'stopped by {summary["stopped_by"]}')
      row = final_evaluation(config, member_dir, progress=progress) if final_eval else None
  except Interrupted as e:
    return finish('interrupted', error=f'stopped by {e} before the member finished; rerun to '
                  'resume it')
  except train.NonFiniteLossError as e:  # A diverged objective is a result, not a crash.
    return finish('failed', error=f'diverged: {e}')
  except Exception as e:  # pylint: disable=broad-except
    finish('failed', error=f'{type(e).__name__}: {e}')
    raise
  if row:
    print(f'[sweep] {name}: eval ' + ', '.join(
        f'{k}={v:.4g}' for k, v in row.items() if isinstance(v, float)), flush=True)
  return finish('done', final_step=summary.get('final_step'))


def run_sweep(config, sweep_path: str, sweep_dir: str, members=(), final_eval: bool = True,
              progress: bool = True, config_path: str = '') -> dict[str, str]:
  """Runs the (selected) members one after the other here; returns `{name: status}`. Stops
  after a member is interrupted; a diverged member does not stop the others."""
  planned = plan(config, sweep_path)
  write_sweep_json(sweep_dir, planned, config_path, sweep_path)
  statuses = {}
  chosen = select(planned, members)
  for i, (name, overrides, member_config) in enumerate(chosen):
    print(f'[sweep] member {i + 1}/{len(chosen)}', flush=True)
    statuses[name] = run_member(name, overrides, member_config, sweep_dir, final_eval,
                                progress)
    if statuses[name] == 'interrupted':
      break
  return statuses


def write_sweep_json(sweep_dir: str, planned, config_path: str, sweep_path: str) -> None:
  _write_json(os.path.join(sweep_dir, SWEEP_JSON), {
      'config': config_path, 'sweep': sweep_path,
      'members': [{'name': n, 'overrides': o} for n, o, _ in planned]})


# ---------------------------------------------------------------------------------------------
# Commands for other launchers.


def commands(launcher: str, names, config_path: str, sweep_path: str, sweep_dir: str,
             base_args=()) -> list[str]:
  """One shell command per member that runs it with `launcher` (print | slurm | tpu);
  `base_args` are the `--config.*` overrides of the base config, passed on."""
  lines = []
  for name in names:
    args = [f'--sweep={sweep_path}', f'--member={name}'] + list(base_args)
    if launcher == 'print':
      cmd = (['python', '-m', 'ddpm_jax.sweep',
              f'--config={config_path}', f'--workdir={sweep_dir}'] + args)
    elif launcher == 'slurm':
      cmd = (['DDPM_MODULE=ddpm_jax.sweep', 'sbatch', f'--job-name=sweep-{name}'[:64],
              'launch/slurm_gpu.sbatch', config_path, sweep_dir] + args)
    elif launcher == 'tpu':
      cmd = ['DDPM_MODULE=ddpm_jax.sweep', 'bash', 'launch/tpu_pod.sh', 'train', config_path,
             sweep_dir] + args
    else:
      raise sweeps.SweepError(f'Unknown launcher {launcher!r}.')
    lines.append(' '.join(c if c.startswith('DDPM_MODULE=') else shlex.quote(c) for c in cmd))
  return lines


def _base_config_args(argv) -> list[str]:
  """The `--config.*` overrides given on this command line (to pass on to printed commands)."""
  return [a for a in argv if a.startswith('--config.')]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config_path = FLAGS['config'].config_filename
  if FLAGS.launcher != 'local':
    planned = select(plan(FLAGS.config, FLAGS.sweep), FLAGS.member)
    print('\n'.join(commands(FLAGS.launcher, [n for n, _, _ in planned], config_path,
                             FLAGS.sweep, FLAGS.workdir, _base_config_args(sys.argv))))
    return
  runtime.setup()
  statuses = run_sweep(FLAGS.config, FLAGS.sweep, FLAGS.workdir, FLAGS.member,
                       FLAGS.final_eval, config_path=config_path)
  counts = {s: list(statuses.values()).count(s) for s in dict.fromkeys(statuses.values())}
  print('[sweep] ' + ', '.join(f'{n} {s}' for s, n in counts.items())
        + f'; report: python -m ddpm_jax.report {FLAGS.workdir}', flush=True)


if __name__ == '__main__':
  cli.run(main)
