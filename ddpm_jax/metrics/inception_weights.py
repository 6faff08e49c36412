"""The FID Inception-v3 weights: pytorch-fid's state_dict names and layouts <-> the Flax
variables of `ddpm_jax.metrics.inception.InceptionV3`.

Weights are not bundled and never downloaded at run time: the user gives pytorch-fid's `.pth`
file (read without torch by `ddpm_jax.metrics.torch_pickle`) or an `.npz` made from it
(`tools/convert_inception_weights.py`) to `load_inception_params`.
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ddpm_jax.metrics import torch_pickle
from ddpm_jax.metrics.inception import INCEPTION_IMAGE_SIZE, InceptionV3

FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
FID_WEIGHTS_SHA256_PREFIX = '6726825d'  # The first 8 hex digits of the published file's SHA-256.

# (Flax collection, leaf name) -> torch state_dict suffix.
_TORCH_SUFFIX = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
                 ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
                 ('batch_stats', 'var'): 'running_var'}


def torch_name(flax_path: tuple[str, ...]) -> str:
  """('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'."""
  collection, *modules, leaf = flax_path
  return '.'.join(modules + [_TORCH_SUFFIX[(collection, leaf)]])


def torch_to_flax_layout(value: np.ndarray) -> np.ndarray:
  """Conv weight OIHW -> HWIO, linear weight (out, in) -> (in, out), vectors unchanged."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T if value.ndim == 2 else value


@functools.lru_cache(maxsize=None)
def _flax_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat Flax variable path -> shape, from an abstract initialisation (no FLOPs)."""
  shapes = jax.eval_shape(
      lambda: InceptionV3().init(jax.random.PRNGKey(0),
                                 jnp.zeros((1, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, 3))))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
  """pytorch-fid state_dict name -> tensor shape (torch layout) for every weight the net uses
  (not the `num_batches_tracked` buffers: they do not affect inference)."""
  # HWIO -> OIHW, (in, out) -> (out, in), vectors unchanged.
  return {torch_name(path): (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]
          for path, s in _flax_shapes().items()}


def torch_state_dict_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """A pytorch-fid FID Inception state_dict as `InceptionV3` variables (float32 NumPy):
  BatchNorm `weight/bias/running_mean/running_var` become `params` scale/bias and `batch_stats`
  mean/var, in Flax layouts. ValueError when keys are missing or unexpected (other than
  `num_batches_tracked`) or a shape is wrong.
  """
  given = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  expected = expected_torch_shapes()
  mismatch = torch_pickle.key_mismatch(given, expected)
  if mismatch:
    torchvision = any(k.startswith('AuxLogits.') for k in given) or (
        'fc.weight' in given and np.shape(given['fc.weight'])[0] == 1000)
    raise ValueError(f'Not a pytorch-fid FID Inception state_dict: {mismatch}.' + (
        " This looks like torchvision's ImageNet Inception-v3, not the FID network "
        "(pytorch-fid's pt_inception-2015-12-05 weights)." if torchvision else ''))
  flat = {}
  for path in _flax_shapes():
    name = torch_name(path)
    value = np.asarray(given[name])
    if value.shape != expected[name]:
      raise ValueError(f'{name}: shape {value.shape}, expected {expected[name]}.')
    flat[path] = np.ascontiguousarray(torch_to_flax_layout(value.astype(np.float32)))
  return traverse_util.unflatten_dict(flat)


def weights_help(path: str, key: str) -> str:
  """One line: no FID Inception weights at `path`; where to get them and how to pass them
  (`key`: the config key, flag or argument that takes the file)."""
  return (f'FID needs the FID Inception-v3 weights ({path or "none given"}), which are not '
          "bundled and never downloaded at run time: where there is internet, download "
          f"pytorch-fid's file (~91 MB), {FID_WEIGHTS_URL}, and pass its path as {key} (an .npz "
          'written by tools/convert_inception_weights.py works too).')


def read_weights_file(path: str) -> dict[str, np.ndarray]:
  """A torch state_dict (.pth, zip or legacy layout) or an .npz as name -> array, told apart
  by content: an .npz is a zip without torch's `<prefix>/data.pkl` record."""
  if zipfile.is_zipfile(path) and torch_pickle.zip_prefix(path) is None:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  return dict(torch_pickle.load_state_dict(path))


def load_inception_params(path: str | None,
                          key: str = 'config.evals.inception.weights') -> dict[str, Any]:
  """`InceptionV3` variables `{'params', 'batch_stats'}` (float32 NumPy) from pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth` (no torch needed) or an .npz with the same keys.

  Raises FileNotFoundError (`weights_help`, naming `key`) when `path` is empty or not a file,
  ValueError when the file is not the FID Inception state_dict.
  """
  path = os.path.expanduser(os.fspath(path or ''))
  if not os.path.isfile(path):
    raise FileNotFoundError(weights_help(path, key))
  return torch_state_dict_to_flax(read_weights_file(path))
