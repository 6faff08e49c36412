"""`WORKDIR/config.json`: the config a run was trained with, written when training starts, and
what it says when a checkpoint does not fit the current config (which fields changed)."""

from __future__ import annotations

import json

CONFIG_NAME = 'config.json'

# The config fields that decide the shapes or the structure of the train state (parameters,
# EMA, optimizer state, loss history). Prefixes end in '.'; `EXCEPT` leaves out fields inside
# them that do not (dropout and rematerialisation change no parameter).
STATE_FIELDS = ('model.', 'data.image_size', 'data.channels', 'diffusion.var_type',
                'diffusion.importance_sampling', 'diffusion.num_timesteps', 'optim.grad_clip')
EXCEPT = ('model.dropout', 'model.remat')


def _path(workdir: str) -> str:
  if '://' in workdir:
    return workdir.rstrip('/') + '/' + CONFIG_NAME
  import os  # pylint: disable=g-import-not-at-top
  return os.path.join(workdir, CONFIG_NAME)


def save(config, workdir: str) -> str:
  """Writes `config` as `WORKDIR/config.json` (local paths and gs://); returns the path."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_NAME).write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  return _path(workdir)


def flatten(tree, prefix: str = '') -> dict:
  """{'model': {'ch': 32}} -> {'model.ch': 32}; tuples become lists (as JSON stores them)."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def load(workdir: str) -> dict | None:
  """The flattened `WORKDIR/config.json`, or None when there is none (or it is unreadable)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  try:
    return flatten(json.loads(epath.Path(_path(workdir)).read_text()))
  except (OSError, ValueError, AttributeError):
    return None


def _shapes_state(key: str) -> bool:
  return key not in EXCEPT and any(
      key.startswith(f) if f.endswith('.') else key == f for f in STATE_FIELDS)


def state_field_differences(config, workdir: str) -> list[str]:
  """`config.KEY: A in WORKDIR/config.json, B now` for each field that shapes the train state
  and differs between the workdir's saved config and `config` (empty if none or no file)."""
  saved = load(workdir)
  if saved is None:
    return []
  now = flatten(config.to_dict())
  # A key only one side has (a field added or removed since the workdir's run) shows as unset.
  return [f'config.{k}: {saved.get(k, "unset")!r} in {_path(workdir)}, {now.get(k, "unset")!r} '
          'now' for k in sorted(set(saved) | set(now))
          if _shapes_state(k) and saved.get(k, 'unset') != now.get(k, 'unset')]
