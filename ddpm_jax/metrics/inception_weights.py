"""The FID Inception-v3 weights: pytorch-fid's state_dict names and layouts <-> the Flax
variables of `ddpm_jax.metrics.inception.InceptionV3`.

Weights are never downloaded: the user gives pytorch-fid's `.pth` file (read without torch by
`ddpm_jax.metrics.torch_pickle`) or an `.npz` made from it (`tools/convert_inception_weights.py`)
to `load_inception_params`.
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

WEIGHTS_HELP = (
    'FID / IS / KID need the FID Inception-v3 weights, which are not bundled and are never '
    'downloaded at run time. On a machine with internet, download pytorch-fid\'s file (~91 MB):\n'
    f'  {FID_WEIGHTS_URL}\n'
    'then pass its path with --config.evals.inception.weights=/path/to/'
    'pt_inception-2015-12-05-6726825d.pth (a .npz written by '
    'tools/convert_inception_weights.py works too).')



# (Flax collection, leaf name) -> torch state_dict suffix.
_TORCH_SUFFIX = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def torch_name(flax_path: tuple[str, ...]) -> str:
  """('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'."""
  collection, *modules, leaf = flax_path
  return '.'.join(modules + [_TORCH_SUFFIX[(collection, leaf)]])


def torch_to_flax_layout(value: np.ndarray) -> np.ndarray:
  """Conv weight OIHW -> HWIO, linear weight (out, in) -> (in, out), vectors unchanged."""
  if value.ndim == 4:  # conv weight OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # linear weight (out, in) -> (in, out)
    return value.T
  return value


@functools.lru_cache(maxsize=None)
def _flax_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat Flax variable path -> shape, from an abstract initialisation (no FLOPs)."""
  shapes = jax.eval_shape(
      lambda: InceptionV3().init(jax.random.PRNGKey(0),
                                 jnp.zeros((1, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, 3))))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
  """pytorch-fid state_dict name -> tensor shape (torch layout) for every weight the net uses.

  `num_batches_tracked` buffers are left out: they do not affect inference.
  """
  def torch_shape(shape):
    if len(shape) == 4:  # HWIO -> OIHW
      return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))  # (in, out) -> (out, in); vectors unchanged

  return {torch_name(path): torch_shape(shape) for path, shape in _flax_shapes().items()}


def torch_state_dict_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Maps a pytorch-fid FID Inception state_dict to `InceptionV3` variables.

  Conv weights OIHW become HWIO kernels, `fc.weight` (1008, 2048) becomes the (2048, 1008) Dense
  kernel, BatchNorm `weight/bias/running_mean/running_var` become `params` scale/bias and
  `batch_stats` mean/var. All values become float32 NumPy arrays.

  Raises:
    ValueError: keys missing or unexpected (other than `num_batches_tracked`), or shapes wrong.
  """
  given = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  expected = expected_torch_shapes()
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  if missing or unexpected:
    hint = ''
    if any(k.startswith('AuxLogits.') for k in unexpected) or ('fc.weight' in given and np.shape(
        given['fc.weight'])[0] == 1000):
      hint = (" This looks like torchvision's ImageNet Inception-v3, not the FID network "
              "(pytorch-fid's pt_inception-2015-12-05 weights).")
    raise ValueError(
        f'Not a pytorch-fid FID Inception state_dict: {len(missing)} missing keys '
        f'{missing[:5]}{"..." if len(missing) > 5 else ""}, {len(unexpected)} unexpected keys '
        f'{unexpected[:5]}{"..." if len(unexpected) > 5 else ""}.{hint}')
  flat = {}
  for path in _flax_shapes():
    name = torch_name(path)
    value = np.asarray(given[name])
    if value.shape != expected[name]:
      raise ValueError(f'{name}: shape {value.shape}, expected {expected[name]}.')
    flat[path] = np.ascontiguousarray(torch_to_flax_layout(value.astype(np.float32)))
  return traverse_util.unflatten_dict(flat)


def read_weights_file(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state_dict (.pth, zip or legacy layout) or an .npz into name -> array.

  The format is told from the content, not the extension: an .npz is a zip of `<name>.npy`
  members, a torch zip checkpoint has a `<prefix>/data.pkl` record.
  """
  if torch_pickle.is_torch_zip(path):
    return dict(torch_pickle.load_state_dict(path))
  if zipfile.is_zipfile(path):
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  return dict(torch_pickle.load_state_dict(path))


def load_inception_params(path: str | None) -> dict[str, Any]:
  """Loads FID Inception weights from pytorch-fid's .pth (no torch needed) or a converted .npz.

  Args:
    path: `config.evals.inception.weights`: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
      (zip or legacy torch layout) or an .npz with the same keys and layouts.

  Returns:
    Flax variables `{'params': ..., 'batch_stats': ...}` (float32 NumPy arrays) for
    `InceptionV3().apply(variables, images)`.

  Raises:
    FileNotFoundError: `path` is empty or not a file; the message says where to get the weights
      and how to pass them.
    ValueError: the file is not the FID Inception state_dict.
  """
  if not path:
    raise FileNotFoundError('No Inception weights file given (config.evals.inception.weights is '
                            f'empty).\n{WEIGHTS_HELP}')
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Inception weights file not found: {path}\n{WEIGHTS_HELP}')
  return torch_state_dict_to_flax(read_weights_file(path))
