"""Fashion-MNIST from its four IDX files, wherever they are.

Looked for, in order: `config.data.data_dir`; Debian's `dataset-fashion-mnist` package
(`/usr/share/datasets/fashion-mnist`); `~/.cache/ddpm_jax/fashion_mnist`, downloading the
official files there (MD5-checked) if needed. The files are read directly (`read_idx`):
Debian's `.gz` files are recompressed, so they differ byte-for-byte from the official ones
and from what tfds registers, but hold the same arrays.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import pathlib
import shutil
import struct
import tempfile
import urllib.request
import zlib

import numpy as np

from ddpm_jax.errors import DatasetError

log = logging.getLogger(__name__)

# Module attributes, read at call time (tests point them elsewhere).
SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
CACHE_DIR = os.path.join('~', '.cache', 'ddpm_jax', 'fashion_mnist')
URLS = (
    'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
    'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/',
)
MD5 = {  # Of the official .gz files (Debian's are recompressed, so not these).
    'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
    'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
    't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
    't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310',
}
SPLITS = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
           'Sneaker', 'Bag', 'Ankle boot')
_HELP = ('Install the data with `apt-get install dataset-fashion-mnist` (files in '
         f'{SYSTEM_DIR}) or pass `--config.data.data_dir=DIR` with DIR holding '
         'train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz '
         'and t10k-labels-idx1-ubyte.gz.')

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype('>i2'),
               0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path) -> np.ndarray:
  """Reads an IDX file (as in MNIST / Fashion-MNIST), gzip'd or not, into a numpy array of its
  dims and native-endian dtype. Raises DatasetError on a bad or truncated file."""
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if raw[:2] == b'\x1f\x8b' else raw
  except (OSError, EOFError, zlib.error) as e:
    raise DatasetError(f'Cannot read IDX file {path}: {e}. Missing or corrupt; replace it.'
                       ) from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DatasetError(f'{path} is not an IDX file (bad magic number {raw[:4].hex()}).')
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  offset = 4 + 4 * ndim
  if len(raw) < offset:
    raise DatasetError(f'{path}: truncated IDX header.')
  dims = struct.unpack(f'>{ndim}I', raw[4:offset])
  count = int(np.prod(dims, dtype=np.int64))
  if len(raw) - offset != count * dtype.itemsize:
    raise DatasetError(f'{path} is corrupt: header says {dims} ({count * dtype.itemsize} bytes '
                       f'of data) but the file holds {len(raw) - offset}.')
  arr = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)
  return arr.astype(dtype.newbyteorder('='))  # A writable, native-endian copy.


def _idx_file(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem + '.gz', stem):
    p = directory / name
    if p.is_file():
      return p
  return None


def _md5(path: pathlib.Path) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'md5').hexdigest()


def download(directory: pathlib.Path) -> None:
  """Downloads the four official .gz files into `directory`, verifying their MD5; a file is
  written under its name only once complete and checked."""
  directory.mkdir(parents=True, exist_ok=True)
  for name, md5 in MD5.items():
    target = directory / name
    if target.is_file() and _md5(target) == md5:
      continue
    errors = []
    for base in URLS:
      fd, tmp = tempfile.mkstemp(dir=directory, suffix='.part')
      try:
        with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(base + name, timeout=60) as r:
          shutil.copyfileobj(r, out)
        got = _md5(pathlib.Path(tmp))
        if got != md5:
          raise OSError(f'MD5 {got} != {md5}')
        os.replace(tmp, target)
        break
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'{base + name}: {e}')
      finally:
        pathlib.Path(tmp).unlink(missing_ok=True)
    else:
      raise OSError('; '.join(errors))
  log.info('Downloaded Fashion-MNIST to %s', directory)


def find_dir(data_dir: str = '') -> pathlib.Path:
  """The first folder holding the four Fashion-MNIST IDX files: `data_dir`, Debian's
  package folder, the user cache (downloading into it when none has them)."""
  cache = pathlib.Path(CACHE_DIR).expanduser()
  candidates = [pathlib.Path(data_dir).expanduser()] if data_dir else []
  candidates += [pathlib.Path(SYSTEM_DIR), cache]
  for c in candidates:
    if all(_idx_file(c, stem) for pair in SPLITS.values() for stem in pair):
      return c
  try:
    download(cache)
    return cache
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(
        'Fashion-MNIST not found: looked for its IDX files in '
        f'{", ".join(str(c) for c in candidates)}, and the download into {cache} failed '
        f'({e}). {_HELP}') from None


@functools.cache
def load(directory, split: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images (N, 28, 28, 1) and int64 labels (N,) of 'train' or 'test' from the IDX files
  in `directory`, read-only and kept in memory after the first call."""
  if split not in SPLITS:
    raise DatasetError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
  directory = pathlib.Path(directory)
  img_stem, lab_stem = SPLITS[split]
  images = read_idx(_idx_file(directory, img_stem) or directory / (img_stem + '.gz'))
  labels = read_idx(_idx_file(directory, lab_stem) or directory / (lab_stem + '.gz'))
  if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or (
      len(images) != len(labels)):
    raise DatasetError(f'Fashion-MNIST {split} files in {directory} are inconsistent: '
                       f'images {images.dtype} {images.shape}, labels {labels.shape}.')
  images, labels = images[..., None], labels.astype(np.int64)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels

