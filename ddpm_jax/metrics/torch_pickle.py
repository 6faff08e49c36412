"""Reading PyTorch `state_dict` files without PyTorch.

`torch.save(state_dict, path)` has written two layouts over the years; both are read here:

* zip (torch >= 1.6): a zip archive whose entries share one top-level folder (`archive/` or the
  file's stem): `<prefix>/data.pkl` is a pickle of the dict, `<prefix>/data/<key>` holds the raw
  bytes of storage `<key>`, `<prefix>/version` the format version and, since torch 2.1,
  `<prefix>/byteorder` the byte order of those bytes (`little` when absent).
* legacy (torch 0.4 - 1.5): five consecutive pickles (the magic number 0x1950a86a20f9469cfc6c,
  the protocol version 1001, a dict of system information with `little_endian`, the data pickle,
  a list of storage keys) followed, for each key in that order, by an int64 element count and
  the storage's raw bytes.

In both the data pickle refers to storages through persistent ids
`('storage', <torch.XStorage class>, key, location, numel[, view_metadata])`, and rebuilds each
tensor with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
backward_hooks[, metadata])`. The unpickler below resolves only those few globals (plus
`collections.OrderedDict`), so a file cannot make it import or call anything else: loading a
hostile file raises `pickle.UnpicklingError` rather than running its code. Tensors come back as
NumPy arrays (copies, C-contiguous, native byte order).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, BinaryIO, Mapping

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name <-> NumPy dtype (little-endian; bfloat16 has no NumPy dtype).
STORAGE_DTYPES = {
    'DoubleStorage': np.dtype('<f8'),
    'FloatStorage': np.dtype('<f4'),
    'HalfStorage': np.dtype('<f2'),
    'LongStorage': np.dtype('<i8'),
    'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'),
    'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'),
    'BoolStorage': np.dtype('?'),
}


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
  """`torch._utils._rebuild_tensor[_v2]`: a strided view into a 1-D storage array.

  The view is checked to stay inside the storage. It is a view (not a copy) because the legacy
  layout fills storages only after the whole pickle has been read.
  """
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise pickle.UnpicklingError(f'bad tensor geometry: size {size}, stride {stride}.')
  if 0 not in size:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise pickle.UnpicklingError(
          f'tensor of size {size}, stride {stride}, offset {offset} overruns its storage of '
          f'{storage.size} elements.')
  item = storage.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:] if 0 not in size else storage[:0], shape=size,
      strides=tuple(s * item for s in stride), writeable=False)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  """`torch._utils._rebuild_parameter`: an `nn.Parameter` is just its data here."""
  return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that knows tensors, storages and OrderedDict, and refuses every other global.

  A `torch.XStorage` class stands as its NumPy dtype (not callable). Without `load_storage`
  (the legacy layout's header pickles) no storage may occur.
  """

  def __init__(self, file: BinaryIO, load_storage=None):
    super().__init__(file, encoding='utf-8')
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if module == 'torch' and name in STORAGE_DTYPES:
      return STORAGE_DTYPES[name]
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    raise pickle.UnpicklingError(
        f'refusing to load global {module}.{name}: only tensors, storages and OrderedDict are '
        'allowed in a state_dict file.')

  def persistent_load(self, pid) -> np.ndarray:
    if (self._load_storage is None or not isinstance(pid, tuple) or len(pid) < 5
        or pid[0] not in ('storage', b'storage')):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}.')
    dtype = pid[1]
    if not isinstance(dtype, np.dtype):
      raise pickle.UnpicklingError(f'unsupported storage type {dtype!r}.')
    key = pid[2].decode('ascii') if isinstance(pid[2], bytes) else str(pid[2])
    numel = int(pid[4])
    view = pid[5] if len(pid) > 5 else None
    return self._load_storage(key, dtype, numel, view)


def _copy_tensors(obj):
  """Replaces every array view in a (nested) dict by a C-contiguous native-endian copy."""
  if isinstance(obj, np.ndarray):
    return np.array(obj, dtype=obj.dtype.newbyteorder('='), order='C')
  if isinstance(obj, Mapping):
    return collections.OrderedDict((k, _copy_tensors(v)) for k, v in obj.items())
  return obj


def zip_prefix(path: str) -> str | None:
  """The `<prefix>/` of the single `<prefix>/data.pkl` record of a torch zip checkpoint; None
  when `path` is not one (a legacy torch file, or another zip such as an .npz)."""
  if not zipfile.is_zipfile(path):
    return None
  with zipfile.ZipFile(path) as zf:
    pkls = [n for n in zf.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
  return pkls[0][:-len('data.pkl')] if len(pkls) == 1 else None


def _load_zip(path: str, prefix: str):
  with zipfile.ZipFile(path) as zf:
    names = set(zf.namelist())
    byteorder = 'little'
    if prefix + 'byteorder' in names:
      byteorder = zf.read(prefix + 'byteorder').decode('ascii').strip()
      if byteorder not in ('little', 'big'):
        raise ValueError(f'{path}: unknown byteorder record {byteorder!r}.')
    storages: dict[str, np.ndarray] = {}

    def load_storage(key, dtype, numel, view):
      if view is not None:
        raise pickle.UnpicklingError('storage views do not occur in the zip layout.')
      if key not in storages:
        raw = zf.read(f'{prefix}data/{key}')
        if len(raw) < numel * dtype.itemsize:
          raise pickle.UnpicklingError(
              f'storage {key}: {len(raw)} bytes for {numel} elements of {dtype}.')
        dt = dtype.newbyteorder('>' if byteorder == 'big' else '<')
        storages[key] = np.frombuffer(raw, dtype=dt, count=numel)
      return storages[key]

    with zf.open(prefix + 'data.pkl') as f:
      return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


def _load_legacy(path: str):
  with open(path, 'rb') as f:
    # The header pickles and the key list hold no tensors. One unpickler per pickle, as in
    # torch: an unpickler may buffer input past the end of its pickle.
    plain = lambda: _RestrictedUnpickler(f).load()  # pylint: disable=unnecessary-lambda-assignment
    try:
      magic = plain()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path}: neither a torch zip checkpoint nor a legacy torch file.') from e
    if magic != LEGACY_MAGIC_NUMBER:
      raise ValueError(f'{path}: neither a torch zip checkpoint nor a legacy torch file '
                       '(very old tar-format files are not supported).')
    if plain() != LEGACY_PROTOCOL_VERSION:
      raise ValueError(f'{path}: unsupported legacy torch protocol version.')
    sys_info = plain()
    endian = '<' if sys_info.get('little_endian', True) else '>'
    roots: dict[str, np.ndarray] = {}

    def load_storage(key, dtype, numel, view):
      if key not in roots:
        roots[key] = np.empty(numel, dtype=dtype.newbyteorder(endian))
      root = roots[key]
      if view is None:
        return root
      _, view_offset, view_size = view
      return root[int(view_offset):int(view_offset) + int(view_size)]

    obj = _RestrictedUnpickler(f, load_storage).load()
    keys = plain()
    for key in keys:
      key = key.decode('ascii') if isinstance(key, bytes) else str(key)
      root = roots[key]
      numel = int(np.frombuffer(f.read(8), dtype=endian + 'i8')[0])
      if numel != root.size:
        raise ValueError(f'{path}: storage {key} has {numel} elements on disk, {root.size} in '
                         'the pickle.')
      raw = f.read(numel * root.itemsize)
      if len(raw) != numel * root.itemsize:
        raise ValueError(f'{path}: file truncated in storage {key}.')
      root[...] = np.frombuffer(raw, dtype=root.dtype)
  return obj


def key_mismatch(given, expected, noun: str = 'keys', limit: int = 6) -> str:
  """How the state_dict keys `given` differ from the `expected` ones, on one line ('' when they
  are the same): how many are missing and unexpected, and the first `limit` of each."""
  parts = []
  for what, keys in (('missing', set(expected) - set(given)),
                     ('unexpected', set(given) - set(expected))):
    if keys:
      keys = sorted(keys)
      more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
      parts.append(f'{len(keys)} {what} {noun} ({", ".join(keys[:limit])}{more})')
  return '; '.join(parts)


def load_state_dict(path: str) -> 'collections.OrderedDict[str, np.ndarray]':
  """A `torch.save`d state_dict (zip or legacy layout) read without torch: an OrderedDict from
  name to NumPy array with the tensor's shape, dtype and PyTorch's layout (OIHW convolutions,
  (out, in) linear weights); non-tensor values as unpickled.

  Raises pickle.UnpicklingError when the file refers to anything but tensors, storages and
  OrderedDict, ValueError when it is not a torch checkpoint of a known layout.
  """
  path = os.fspath(path)
  prefix = zip_prefix(path)
  obj = _copy_tensors(_load_legacy(path) if prefix is None else _load_zip(path, prefix))
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: holds a {type(obj).__name__}, not a state_dict.')
  return obj
