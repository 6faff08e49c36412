"""`WORKDIR/config.json`: the config a run was trained with, written when training starts, and
what it says when a checkpoint does not fit the current config (which fields changed)."""

from __future__ import annotations

import json

from etils import epath
from flax import traverse_util

CONFIG_NAME = 'config.json'

# The config fields that decide the shapes or the structure of the train state (parameters,
# EMA, optimizer state, loss history). Prefixes end in '.'; `EXCEPT` leaves out fields inside
# them that do not (dropout and rematerialisation change no parameter).
STATE_FIELDS = ('model.', 'data.image_size', 'data.channels', 'diffusion.var_type',
                'diffusion.importance_sampling', 'diffusion.num_timesteps', 'optim.grad_clip')
EXCEPT = ('model.dropout', 'model.remat')


def save(config, workdir: str) -> str:
  """Writes `config` as `WORKDIR/config.json` (local paths and gs://); returns the path."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  path = epath.Path(workdir) / CONFIG_NAME
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  return str(path)


def flatten(tree: dict) -> dict:
  """{'model': {'ch': 32}, 'train.seed': 1} -> {'model.ch': 32, 'train.seed': 1}: the dotted
  keys of a config dict, a saved config or a sweep's overrides (an empty group has none)."""
  return traverse_util.flatten_dict(tree, sep='.')


def _shapes_state(key: str) -> bool:
  return key not in EXCEPT and any(
      key.startswith(f) if f.endswith('.') else key == f for f in STATE_FIELDS)


def state_field_differences(config, workdir: str) -> list[str]:
  """`config.KEY: A in WORKDIR/config.json, B now` for each field that shapes the train state
  and differs between the workdir's saved config and `config` (empty if none, or if the file
  is missing or unreadable)."""
  path = epath.Path(workdir) / CONFIG_NAME
  try:
    saved = flatten(json.loads(path.read_text()))
  except (OSError, ValueError, AttributeError):
    return []
  now = flatten(json.loads(config.to_json_best_effort()))  # Tuples as JSON lists, as saved.
  # A key only one side has (a field added or removed since the workdir's run) shows as unset.
  return [f'config.{k}: {saved.get(k, "unset")!r} in {path}, {now.get(k, "unset")!r} '
          'now' for k in sorted(set(saved) | set(now))
          if _shapes_state(k) and saved.get(k, 'unset') != now.get(k, 'unset')]
