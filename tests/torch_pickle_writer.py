"""Writing PyTorch `state_dict` files without PyTorch, for tests: the counterpart of
`ddpm_jax.metrics.torch_pickle`, which reads them.

`save_state_dict` writes either layout (zip or legacy) from NumPy arrays with the same opcodes
torch uses, so that tests build checkpoints with a real file's structure without PyTorch.
`flax_to_torch_state_dict` turns `InceptionV3` variables into pytorch-fid's names and layouts.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from ddpm_jax.metrics import inception_weights
from ddpm_jax.metrics.torch_pickle import (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
                                           STORAGE_DTYPES)

_STORAGE_NAMES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}


class _Global:
  """A reference to `module.name` that is pickled as GLOBAL without importing `module`."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires reduce functions to be callable.
    raise TypeError(f'{self.module}.{self.name} is a pickling placeholder.')


class _Storage:

  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Tensor:
  """A C-contiguous tensor that pickles as `torch._utils._rebuild_tensor_v2(...)`."""

  def __init__(self, storage: _Storage, shape):
    self.storage, self.shape = storage, tuple(shape)

  def __reduce__(self):
    stride, acc = [], 1
    for n in reversed(self.shape):
      stride.append(acc)
      acc *= n
    args = (self.storage, 0, self.shape, tuple(reversed(stride)), False,
            collections.OrderedDict())
    return _Global('torch._utils', '_rebuild_tensor_v2'), args


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pure-Python pickler that writes `_Global`s as GLOBAL opcodes and storages as persistent ids."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_placeholder_global(self, obj: _Global):
    self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode('ascii'))
    self.memoize(obj)

  dispatch[_Global] = save_placeholder_global

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      name = _STORAGE_NAMES[obj.array.dtype.newbyteorder('<')]
      return ('storage', _Global('torch', name), obj.key, 'cpu', obj.array.size)
    return None


def _as_pickle_tree(state_dict: Mapping[str, np.ndarray]):
  """(OrderedDict of _Tensor, list of (key, little-endian 1-D array)) for `state_dict`."""
  tensors, storages = collections.OrderedDict(), []
  # Like `nn.Module.state_dict()`, whose OrderedDict carries per-module versions (a BUILD opcode).
  setattr(tensors, '_metadata', collections.OrderedDict([('', {'version': 1})]))
  for i, (name, value) in enumerate(state_dict.items()):
    arr = np.asarray(value)
    arr = np.array(arr, dtype=arr.dtype.newbyteorder('<'), order='C')
    if arr.dtype.newbyteorder('<') not in _STORAGE_NAMES:
      raise TypeError(f'{name}: dtype {arr.dtype} has no torch storage type here.')
    storage = _Storage(str(i), arr.reshape(-1))
    storages.append(storage)
    tensors[name] = _Tensor(storage, arr.shape)
  return tensors, storages


def _dumps(obj) -> bytes:
  buf = io.BytesIO()
  _TorchPickler(buf, protocol=2).dump(obj)
  return buf.getvalue()


def save_state_dict(path: str, state_dict: Mapping[str, np.ndarray], layout: str = 'zip') -> str:
  """Writes NumPy arrays as a torch state_dict file that `torch.load` and `load_state_dict` read.

  Args:
    path: output file; for the zip layout its stem names the archive folder, as in torch.
    state_dict: name -> array (any dtype in `STORAGE_DTYPES`), in torch's layouts.
    layout: 'zip' (torch >= 1.6) or 'legacy' (torch 0.4 - 1.5).

  Returns:
    `path`.
  """
  tensors, storages = _as_pickle_tree(state_dict)
  if layout == 'zip':
    prefix = os.path.splitext(os.path.basename(path))[0] or 'archive'
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as zf:
      zf.writestr(f'{prefix}/data.pkl', _dumps(tensors))
      zf.writestr(f'{prefix}/byteorder', 'little')
      for s in storages:
        zf.writestr(f'{prefix}/data/{s.key}', s.array.tobytes())
      zf.writestr(f'{prefix}/version', '3\n')
  elif layout == 'legacy':
    sys_info = {'protocol_version': LEGACY_PROTOCOL_VERSION, 'little_endian': True,
                'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
    with open(path, 'wb') as f:
      for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, sys_info):
        pickle.dump(header, f, protocol=2)
      f.write(_dumps(tensors))
      pickle.dump([s.key for s in storages], f, protocol=2)
      for s in storages:
        f.write(np.int64(s.array.size).astype('<i8').tobytes())
        f.write(s.array.tobytes())
  else:
    raise ValueError(f"layout must be 'zip' or 'legacy', got {layout!r}.")
  return path


def flax_to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `inception_weights.torch_state_dict_to_flax`: `InceptionV3` variables ->
  pytorch-fid names, with HWIO kernels as OIHW and (in, out) Dense kernels as (out, in)."""
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  out = {}
  for path, value in flat.items():
    value = np.asarray(value)
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
      value = value.T
    out[inception_weights.torch_name(path)] = np.ascontiguousarray(value)
  return out
