"""Ablation sweeps as data: a sweep is a list of config overrides, one dict per run.

A sweep file (`configs/sweeps/*.py`) defines `get_sweep()` returning that list, usually built
with the helpers here:

    from ddpm_jax.sweep.spec import product, zip_axes

    def get_sweep():
      # 2 x 3 = 6 runs: each mean type with each (loss, variance) pair.
      return product({'diffusion.mean_type': ['mu', 'eps']},
                     zip_axes({'diffusion.loss': ['kl', 'kl', 'mse'],
                               'diffusion.var_type': ['learned', 'fixedlarge', 'fixedlarge']}))

Keys are dotted config paths (`model.ch_mult`); nested dicts (`{'model': {'ch_mult': ...}}`)
are flattened to them. `apply_overrides(config, overrides)` checks every key and value against
the base config before anything runs, and `name_members` names each run by the keys that vary
across the sweep (`mean_type=mu,loss=kl,var_type=learned`), which is its workdir's name.
"""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import os
import re
from typing import Any, Iterable, Mapping, Sequence, Union

import ml_collections

from ddpm_jax import saved_config
from ddpm_jax.errors import UserError

Overrides = dict  # {dotted key: value}
Axes = Union[Mapping[str, Sequence[Any]], Sequence[Mapping[str, Any]]]


class SweepError(UserError, ValueError):
  """A sweep file or one of its runs is malformed; the message says which and why."""


flatten = saved_config.flatten  # {'model': {'ch': 64}} -> {'model.ch': 64}.


def _runs(axes: Axes) -> list[Overrides]:
  """A list of runs from either a list of override dicts or a `{key: values}` mapping (the
  product of its keys, in order)."""
  if isinstance(axes, Mapping):
    axes = flatten(axes)  # {'model': {'ch': [32, 64]}} -> {'model.ch': [32, 64]}.
    keys = list(axes)
    for k in keys:
      values = axes[k]
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise SweepError(f'Axis {k!r} needs a non-empty list of values, got {values!r}.')
    return [flatten(dict(zip(keys, combo)))
            for combo in itertools.product(*(axes[k] for k in keys))]
  runs = [flatten(r) for r in axes]
  if not runs:
    raise SweepError('An empty list of runs.')
  return runs


def product(*axes: Axes) -> list[Overrides]:
  """Every combination of the given axes. Each argument is a `{key: [values]}` mapping (its
  keys multiply too) or a list of runs (e.g. from `zip_axes`); later arguments vary fastest."""
  if not axes:
    raise SweepError('product() needs at least one axis.')
  out = []
  for parts in itertools.product(*map(_runs, axes)):
    run = {}
    for part in parts:
      clash = set(run) & set(part)
      if clash:
        raise SweepError(f'Key(s) {sorted(clash)} appear on two axes of a product.')
      run.update(part)
    out.append(run)
  return out


def zip_axes(axes: Mapping[str, Sequence[Any]]) -> list[Overrides]:
  """Runs that step through several keys together: `{'a': [1, 2], 'b': [3, 4]}` ->
  `[{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]`. Every list must have the same length."""
  axes = flatten(axes)
  lengths = {k: len(v) for k, v in axes.items()}
  if not lengths:
    raise SweepError('zip_axes() needs at least one key.')
  if len(set(lengths.values())) != 1:
    raise SweepError(f'zip_axes() needs lists of one length, got {lengths}.')
  _runs(axes)  # The per-key checks.
  return [flatten(dict(zip(axes, values))) for values in zip(*axes.values())]


def concat(*sweeps: Iterable[Mapping[str, Any]]) -> list[Overrides]:
  """The runs of several sweeps one after the other (e.g. a grid plus a few extra runs)."""
  return [flatten(r) for s in sweeps for r in s]


# ---------------------------------------------------------------------------------------------
# Sweep files.


def load_sweep(path: str) -> list[Overrides]:
  """The runs of the sweep file at `path` (its `get_sweep()`), checked for shape and for
  duplicate runs."""
  if not os.path.isfile(path):
    raise SweepError(f'No sweep file {path!r} (sweeps live in configs/sweeps/*.py).')
  spec = importlib.util.spec_from_file_location('ddpm_jax_sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{path} defines no get_sweep() returning the runs.')
  runs = module.get_sweep()
  if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or not runs:
    raise SweepError(f'{path}: get_sweep() must return a non-empty list of override dicts, '
                     f'got {type(runs).__name__}.')
  runs = concat(runs)
  seen = {}
  for i, r in enumerate(runs):
    key = repr(sorted(r.items()))
    if key in seen:
      raise SweepError(f'{path}: runs {seen[key]} and {i} are the same: {r}.')
    seen[key] = i
  return runs


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with the overrides set. An unknown key or a value of the wrong type is
  a `SweepError` naming the key (and the closest existing keys)."""
  config = config.copy_and_resolve_references()
  known = None
  for key, value in flatten(overrides).items():
    *path, leaf = key.split('.')
    node = config
    for part in path:  # A sweep's key may name no field: that is reported below.
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      known = known or list(saved_config.flatten(config.to_dict()))
      close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
      hint = f' Did you mean {", ".join(close)}?' if close else ''
      raise SweepError(f'Unknown config key {key!r} in a sweep run.{hint}')
    old = node[leaf]
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    try:
      with node.unlocked():
        node[leaf] = value
    except (TypeError, ValueError) as e:
      raise SweepError(f'Bad value {value!r} for {key!r} (now {old!r}): {e}') from e
  return config


# ---------------------------------------------------------------------------------------------
# Names.


def format_value(value: Any) -> str:
  """A short, filesystem-safe rendering: 0.001 -> '0.001', (1, 2, 2) -> '1-2-2', True -> 'True'."""
  if isinstance(value, (tuple, list)):
    return '-'.join(format_value(v) for v in value) or 'none'
  text = f'{value:g}' if isinstance(value, float) else str(value)
  return re.sub(r'[^A-Za-z0-9._+-]', '_', text) or 'empty'


def name_members(runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, Overrides]]:
  """`(name, overrides)` per run. The name lists the keys whose values differ between runs, by
  their last component unless two such keys share it (then in full); a sweep of one run is
  named `base`. Names are unique and stable (they do not depend on the order of the runs)."""
  runs = [flatten(r) for r in runs]
  keys = list(dict.fromkeys(k for r in runs for k in r))
  varying = [k for k in keys
             if len({repr(r.get(k, '<unset>')) for r in runs}) > 1]
  last = [k.split('.')[-1] for k in varying]
  short = {k: (s if last.count(s) == 1 else k) for k, s in zip(varying, last)}
  out, seen = [], {}
  for i, r in enumerate(runs):
    parts = [f'{short[k]}={format_value(r[k])}' for k in varying if k in r]
    name = ','.join(parts) or 'base'
    if name in seen:
      raise SweepError(f'Runs {seen[name]} and {i} get the same name {name!r}.')
    seen[name] = i
    out.append((name, r))
  return out
