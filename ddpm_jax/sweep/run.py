"""The sweep runner: one training run per sweep member, then its final evaluation.

Each member trains in `WORKDIR/<name>` (the name lists the overrides that vary, see
`spec.name_members`) with the base config plus its own overrides. `WORKDIR/sweep.json` lists
the members and each member's `sweep_member.json` its status: `running`, `done`, `failed` (with
the error; after a diverged loss, a result in an ablation, the sweep goes on with the next
member, any other error stops it) or `interrupted` (SIGTERM/Ctrl-C, in training — a checkpoint
was saved — or in the final evaluation; the sweep stops). Re-running skips `done` members and
resumes the others from their newest checkpoint. A member's training ends with its final
evaluation (`train.train_and_evaluate`'s `final_eval`): every evaluator of `config.evals` at its
training-time size (`train_examples`, `train_samples`) on the final EMA parameters, into its
`eval_results.csv`. Every member's config is built and validated before the first run.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import time

import jax

from ddpm_jax import config_checks, image_files, train, workdir_lock
from ddpm_jax.sweep import spec
from ddpm_jax.sweep.report import MEMBER_JSON, SWEEP_JSON, member_state


def _write_json(path: str, obj) -> None:
  if jax.process_index() == 0:
    text = json.dumps(obj, indent=1, default=str)
    image_files.write_atomic(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def plan(config, sweep_path: str) -> list[tuple[str, dict, object]]:
  """`(name, overrides, config)` per member, every member's config built and validated first,
  so that a typo in the sweep fails before any run starts."""
  out = []
  for name, overrides in spec.name_members(spec.load_sweep(sweep_path)):
    member_config = spec.apply_overrides(config, overrides)
    try:
      config_checks.validate(member_config)
    except ValueError as e:
      raise spec.SweepError(f'Member {name}: {e}') from e
    out.append((name, overrides, member_config))
  return out


def select(members, wanted) -> list:
  """The members named (or indexed) in `wanted`; all of them when it is empty."""
  if not wanted:
    return list(members)
  names = [m[0] for m in members]
  for w in wanted:
    if w not in names and not (w.isdigit() and int(w) < len(members)):
      raise spec.SweepError(f'No member {w!r}; the members are: {", ".join(names)}.')
  return [members[names.index(w) if w in names else int(w)] for w in wanted]


class Interrupted(Exception):
  """SIGTERM or SIGINT arrived outside the training loop (which handles them itself)."""


def _raise_interrupted(signum, frame):
  del frame
  raise Interrupted(signal.Signals(signum).name)


def run_member(name: str, overrides: dict, config, sweep_dir: str, final_eval: bool = True,
               progress: bool = True) -> str:
  """Trains (or resumes, or skips) one member, holding its workdir's lock; returns its status."""
  member_dir = os.path.join(sweep_dir, name)
  record = member_state(member_dir)
  if record['status'] == 'done':
    print(f'[sweep] {name}: done, skipped', flush=True)
    return 'skipped'
  with workdir_lock.acquire_for_run(member_dir, what=f'sweep member {name}'):
    record = {'name': name, 'overrides': overrides, 'status': 'running',
              'seconds': float(record.get('seconds', 0.0)),
              'attempts': record.get('attempts', 0) + 1}
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
      # Signals outside the training loop (which saves and returns) interrupt the member, so that
      # its status is not left at `running`.
      with train.handling_signals(_raise_interrupted):
        summary = train.train_and_evaluate(config, member_dir, progress=progress,
                                           final_eval=final_eval)
        if summary.get('stopped_by'):
          return finish('interrupted', error=f'stopped by {summary["stopped_by"]}')
    except Interrupted as e:
      return finish('interrupted', error=f'stopped by {e} before the member finished; rerun to '
                    'resume it')
    except train.NonFiniteLossError as e:  # A diverged objective is a result, not a crash.
      return finish('failed', error=f'diverged: {e}')
    except Exception as e:  # pylint: disable=broad-except
      finish('failed', error=f'{type(e).__name__}: {e}')
      raise
    return finish('done', final_step=summary.get('final_step'))


def run_sweep(config, sweep_path: str, sweep_dir: str, members=(), final_eval: bool = True,
              progress: bool = True, config_path: str = '') -> dict[str, str]:
  """Runs the (selected) members one after the other here; returns `{name: status}`. Stops
  after a member is interrupted; a diverged member does not stop the others."""
  planned = plan(config, sweep_path)
  _write_json(os.path.join(sweep_dir, SWEEP_JSON), {
      'config': config_path, 'sweep': sweep_path,
      'members': [{'name': n, 'overrides': o} for n, o, _ in planned]})
  statuses = {}
  chosen = select(planned, members)
  for i, (name, overrides, member_config) in enumerate(chosen):
    print(f'[sweep] member {i + 1}/{len(chosen)}', flush=True)
    statuses[name] = run_member(name, overrides, member_config, sweep_dir, final_eval,
                                progress)
    if statuses[name] == 'interrupted':
      break
  return statuses


def commands(launcher: str, names, config_path: str, sweep_path: str, sweep_dir: str,
             base_args=()) -> list[str]:
  """One shell command per member that runs it with `launcher` (print | slurm | tpu);
  `base_args` are the `--config.*` overrides of the base config, passed on."""
  if launcher not in ('print', 'slurm', 'tpu'):
    raise spec.SweepError(f'Unknown launcher {launcher!r}.')
  lines = []
  for name in names:
    if launcher == 'print':
      cmd = ['python', '-m', 'ddpm_jax.sweep', f'--config={config_path}', f'--workdir={sweep_dir}']
    elif launcher == 'slurm':
      cmd = ['sbatch', f'--job-name=sweep-{name}'[:64], 'launch/slurm_gpu.sbatch', config_path,
             sweep_dir]
    else:
      cmd = ['bash', 'launch/tpu_pod.sh', 'train', config_path, sweep_dir]
    env = '' if launcher == 'print' else 'DDPM_MODULE=ddpm_jax.sweep '
    lines.append(env + shlex.join([*cmd, f'--sweep={sweep_path}', f'--member={name}', *base_args]))
  return lines
