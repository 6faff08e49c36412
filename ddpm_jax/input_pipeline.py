"""Deterministic, resumable input pipeline: data sources, preprocessing and batching.

Public API (the training loop and the evaluation code depend on these names):

* `create_train_iterator(data_config, global_batch_size, seed, start_step=0, process_index=0,
  process_count=1, num_classes=0)` -> `TrainIterator`: an infinite iterator of float32 batches
  `(global_batch_size // process_count, image_size, image_size, channels)` in [-1, 1], with
  `get_batch(step)` to compute the batch of any step directly. With `num_classes > 0` (a
  class-conditional model) each batch is a dict `{'image': ..., 'label': int32 (B,)}`.
* `load_split(data_config, split, max_examples=None)` -> uint8 `(N, H, W, C)` preprocessed
  images (crop / resize / pad and channel conversion, no flip), in dataset order.

Data sources (random access: `len(source)` and `source[i] -> (uint8 HWC image, int label or
None)`), chosen by `config.data.dataset`:

* `fashion_mnist`: a prepared TFDS copy under `config.data.data_dir` if there is one; else the
  four IDX files (`train-images-idx3-ubyte.gz`, ...) in `config.data.data_dir`; else Debian's
  `dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist`); else
  `~/.cache/ddpm_jax/fashion_mnist`, downloading the official files there if needed. Loaded once
  into memory (70k images of 28x28x1).
* `cifar10`, `oxford_flowers102`, `celeb_a`, `celeb_a_hq` (TFDS `celeb_a_hq/<res>`, the
  smallest prepared resolution >= image_size; `celeb_a_hq/256` may be named explicitly) and
  `lsun/church` (TFDS `lsun/church_outdoor`; any `lsun/<category>` is passed through): read with
  `tfds.data_source`, which needs the dataset prepared in the ArrayRecord format. Reading needs no
  TensorFlow; preparing does (the error message gives the exact command).
* `folder`: every png/jpg/jpeg/webp/bmp image under `config.data.data_dir` (recursively, sorted
  by path). If `data_dir/<split>` is a folder, the split reads only that folder.

Preprocessing of one image (`preprocess_image`): channel conversion (`convert_channels`), centre
crop to a square (`center_crop`), then to `image_size` by zero padding (`pad_to_size`) when the
square is smaller than `image_size` by an even number of pixels (Fashion-MNIST 28 -> 32 gets a
2-pixel black border instead of being blurred by upsampling), else by antialiased resizing
(`resize`, PIL Lanczos). Batches are then scaled to [-1, 1] by `x / 127.5 - 1` (`to_float`) and
flipped left-right per image with probability 1/2 when `config.data.random_flip`.

Batching is a pure function of (seed, step). Epoch `e` visits the dataset in the order of a
permutation seeded by (seed, e); the global stream of examples is the concatenation of the epochs.
Global batch `step` is positions [step * B, (step + 1) * B) of that stream, and process p of P
takes the contiguous slice [p * B / P, (p + 1) * B / P) of it. The flip of an example is drawn
from (seed, step) and its position in the global batch. Hence a run resumed at `start_step`
sees exactly the batches of an uninterrupted run, and the processes' local batches put together
are the one-process global batch, flips included.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gzip
import hashlib
import logging
import os
import pathlib
import shutil
import struct
import tempfile
import threading
import urllib.request
import zlib
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from ddpm_jax import image_files
from ddpm_jax.errors import UserError

__all__ = [
    'DATASETS',
    'ArraySource',
    'DatasetError',
    'FolderSource',
    'TfdsSource',
    'TrainIterator',
    'center_crop',
    'check_dataset_name',
    'convert_channels',
    'create_train_iterator',
    'find_fashion_mnist_dir',
    'flip_images',
    'flip_mask',
    'load_fashion_mnist',
    'load_split',
    'open_source',
    'pad_to_size',
    'preprocess_image',
    'preprocess_images',
    'read_idx',
    'resize',
    'to_float',
]

log = logging.getLogger(__name__)

# Names accepted in `config.data.dataset`.
DATASETS = ('cifar10', 'oxford_flowers102', 'celeb_a_hq', 'celeb_a', 'lsun/church',
            'fashion_mnist', 'folder')
_TFDS_NAMES = {
    'cifar10': 'cifar10',
    'oxford_flowers102': 'oxford_flowers102',
    'celeb_a': 'celeb_a',
    'lsun/church': 'lsun/church_outdoor',
}
_CELEBA_HQ_RESOLUTIONS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Extra `pip install`s that `download_and_prepare` needs, besides TensorFlow.
_TFDS_PREPARE_EXTRAS = {'lsun': ' tensorflow-io'}

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')

# Fashion-MNIST. Module attributes, read at call time (tests point them elsewhere).
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CACHE_DIR = os.path.join('~', '.cache', 'ddpm_jax', 'fashion_mnist')
FASHION_MNIST_URLS = (
    'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
    'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/',
)
FASHION_MNIST_MD5 = {  # Of the official .gz files (Debian's are recompressed, so not these).
    'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
    'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
    't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
    't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310',
}
_FASHION_MNIST_SPLITS = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_FASHION_MNIST_HELP = ('Install the data with `apt-get install dataset-fashion-mnist` (files in '
                       f'{FASHION_MNIST_SYSTEM_DIR}) or pass '
                       '`--config.data.data_dir=DIR` with DIR holding train-images-idx3-ubyte.gz, '
                       'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and '
                       't10k-labels-idx1-ubyte.gz.')

# Streams of the per-run seed.
_SHUFFLE_STREAM = 0
_FLIP_STREAM = 1


class DatasetError(UserError, RuntimeError):
  """A dataset is missing, unprepared, corrupt or misconfigured; the message says what to do."""


_NO_LABELS = ('config.model.num_classes > 0 (a class-conditional model) needs a dataset with '
              'labels, and this one has none (an image folder, celeb_a_hq, lsun): set '
              'config.model.num_classes=0.')


# --------------------------------------------------------------------------------------------
# Preprocessing (numpy / PIL).
# --------------------------------------------------------------------------------------------


def _as_hwc(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3:
    raise ValueError(f'Expected an image (H, W) or (H, W, C), got shape {image.shape}.')
  if image.dtype != np.uint8:
    raise ValueError(f'Expected a uint8 image, got {image.dtype}.')
  return image


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 (..., H, W, C) -> (..., H, W, `channels`).

  Grey -> RGB repeats the channel; RGB -> grey is ITU-R 601-2 luma with PIL's fixed-point
  arithmetic (identical to `PIL.Image.convert('L')`). An alpha channel is dropped.
  """
  if channels not in (1, 3):
    raise ValueError(f'config.data.channels must be 1 or 3, got {channels}.')
  c = image.shape[-1]
  if c == 2:  # Grey + alpha.
    image, c = image[..., :1], 1
  elif c == 4:  # RGBA.
    image, c = image[..., :3], 3
  if c == channels:
    return image
  if c == 1:
    return np.repeat(image, 3, axis=-1)
  if c == 3:
    rgb = image.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]
  raise ValueError(f'Cannot convert an image with {c} channels to {channels}.')


def center_crop(image: np.ndarray) -> np.ndarray:
  """The largest centred square of (..., H, W, C); an odd surplus drops the extra row/column
  at the bottom/right."""
  h, w = image.shape[-3], image.shape[-2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return image[..., top:top + s, left:left + s, :]


def pad_to_size(image: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads a square (..., s, s, C) image centrally to (..., size, size, C); size - s must be
  even and >= 0."""
  s = image.shape[-2]
  margin = size - s
  if image.shape[-3] != s or margin < 0 or margin % 2:
    raise ValueError(f'pad_to_size needs a square image at most {size} wide with an even '
                     f'margin, got {image.shape}.')
  p = margin // 2
  pad = [(0, 0)] * (image.ndim - 3) + [(p, p), (p, p), (0, 0)]
  return np.pad(image, pad, mode='constant', constant_values=0)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes one uint8 (H, W, C) image to (size, size, C) with PIL's Lanczos filter, which
  widens its support when downsampling (antialiased)."""
  h, w, c = image.shape
  if (h, w) == (size, size):
    return image
  if c == 1:
    pil = Image.fromarray(image[:, :, 0], mode='L')
  elif c == 3:
    pil = Image.fromarray(image, mode='RGB')
  else:
    raise ValueError(f'resize expects 1 or 3 channels, got {c}.')
  out = np.asarray(pil.resize((size, size), resample=Image.Resampling.LANCZOS))
  return out[:, :, None] if c == 1 else out


def _pads(s: int, size: int) -> bool:
  """Whether a square of side `s` is zero-padded (not resized) to `size`: only for a small even
  margin of at most size / 8 (Fashion-MNIST 28 -> 32); anything smaller is upscaled."""
  return s < size and (size - s) % 2 == 0 and size - s <= size // 8


def _needs_resize(height: int, width: int, size: int) -> bool:
  """Whether `preprocess_image` resizes (rather than pads or keeps) an H x W image."""
  s = min(height, width)
  return s != size and not _pads(s, size)


def _square_to_size(image: np.ndarray, size: int) -> np.ndarray:
  s = image.shape[-2]
  if s == size:
    return image
  if _pads(s, size):
    return pad_to_size(image, size)
  if image.ndim == 3:
    return resize(image, size)
  return np.stack([resize(im, size) for im in image]) if len(image) else np.zeros(
      (0, size, size, image.shape[-1]), np.uint8)


def preprocess_image(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """One uint8 image (H, W[, C]) -> uint8 (image_size, image_size, channels).

  Channel conversion, centre crop to a square, then zero padding when the square is smaller
  than `image_size` by a small even margin (at most image_size / 8, e.g. Fashion-MNIST
  28 -> 32), else Lanczos resizing.
  """
  image = convert_channels(_as_hwc(image), channels)
  return np.ascontiguousarray(_square_to_size(center_crop(image), image_size))


def preprocess_images(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """`preprocess_image` over a uint8 array (N, H, W[, C]) of same-sized images, vectorised
  where possible (channels, crop and pad are whole-array operations)."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f'Expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}.')
  images = convert_channels(images, channels)
  return np.ascontiguousarray(_square_to_size(center_crop(images), image_size))


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 `x / 127.5 - 1`: 0 -> -1.0 and 255 -> 1.0 exactly."""
  out = np.asarray(images).astype(np.float32)
  out /= np.float32(127.5)
  out -= np.float32(1.0)
  return out


def flip_mask(seed: int, step: int, global_batch_size: int) -> np.ndarray:
  """bool (global_batch_size,): which positions of global batch `step` are flipped left-right.
  Each is a fair coin drawn from (seed, step), the same for every process count."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, _FLIP_STREAM, step]))
  return rng.random(global_batch_size) < 0.5


def flip_images(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
  """Mirrors (N, H, W, C) images left-right where `flips` (bool (N,)) is set, in place."""
  flips = np.asarray(flips, dtype=bool)
  if flips.any():
    images[flips] = images[flips][:, :, ::-1]
  return images


# --------------------------------------------------------------------------------------------
# IDX files and Fashion-MNIST.
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype('>i2'),
               0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def _read_maybe_gzip(path: pathlib.Path) -> bytes:
  with open(path, 'rb') as f:
    magic = f.read(2)
    f.seek(0)
    if magic == b'\x1f\x8b':
      with gzip.GzipFile(fileobj=f) as g:
        return g.read()
    return f.read()


def _idx_header(raw: bytes, path) -> tuple[np.dtype, tuple[int, ...], int]:
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DatasetError(f'{path} is not an IDX file (bad magic number {raw[:4].hex()}).')
  ndim = raw[3]
  offset = 4 + 4 * ndim
  if len(raw) < offset:
    raise DatasetError(f'{path}: truncated IDX header.')
  dims = struct.unpack(f'>{ndim}I', raw[4:offset])
  return _IDX_DTYPES[raw[2]], dims, offset


def read_idx(path) -> np.ndarray:
  """Reads an IDX file (as in MNIST / Fashion-MNIST), gzip'd or not, into a numpy array of its
  dims and native-endian dtype. Raises DatasetError on a bad or truncated file."""
  path = pathlib.Path(path)
  try:
    raw = _read_maybe_gzip(path)
  except (OSError, EOFError, zlib.error) as e:
    raise DatasetError(f'Cannot read IDX file {path}: {e}. Missing or corrupt; replace it.'
                       ) from None
  dtype, dims, offset = _idx_header(raw, path)
  count = int(np.prod(dims, dtype=np.int64))
  if len(raw) - offset != count * dtype.itemsize:
    raise DatasetError(f'{path} is corrupt: header says {dims} ({count * dtype.itemsize} bytes '
                       f'of data) but the file holds {len(raw) - offset}.')
  arr = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)
  return arr.astype(dtype.newbyteorder('='))  # A writable, native-endian copy.


def _idx_file(directory: pathlib.Path, stem: str) -> Optional[pathlib.Path]:
  for name in (stem + '.gz', stem):
    p = directory / name
    if p.is_file():
      return p
  return None


def _has_fashion_mnist(directory: pathlib.Path) -> bool:
  return all(_idx_file(directory, stem) is not None
             for pair in _FASHION_MNIST_SPLITS.values() for stem in pair)


def _md5(path: pathlib.Path) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _download_fashion_mnist(directory: pathlib.Path) -> None:
  """Downloads the four official .gz files into `directory`, verifying their MD5."""
  directory.mkdir(parents=True, exist_ok=True)
  for name, md5 in FASHION_MNIST_MD5.items():
    target = directory / name
    if target.is_file() and _md5(target) == md5:
      continue
    errors = []
    for base in FASHION_MNIST_URLS:
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
        if os.path.exists(tmp):
          os.remove(tmp)
    else:
      raise OSError('; '.join(errors))
  log.info('Downloaded Fashion-MNIST to %s', directory)


def find_fashion_mnist_dir(data_dir: str = '', download: bool = True) -> pathlib.Path:
  """The first folder holding the four Fashion-MNIST IDX files: `data_dir`, Debian's
  package folder, the user cache (downloading into it if `download`)."""
  candidates = []
  if data_dir:
    candidates.append(pathlib.Path(data_dir).expanduser())
  candidates += [pathlib.Path(FASHION_MNIST_SYSTEM_DIR),
                 pathlib.Path(FASHION_MNIST_CACHE_DIR).expanduser()]
  for c in candidates:
    if _has_fashion_mnist(c):
      return c
  cache = pathlib.Path(FASHION_MNIST_CACHE_DIR).expanduser()
  reason = 'downloading is disabled'
  if download:
    try:
      _download_fashion_mnist(cache)
      return cache
    except Exception as e:  # pylint: disable=broad-except
      reason = f'the download into {cache} failed ({e})'
  raise DatasetError(
      'Fashion-MNIST not found: looked for its IDX files in '
      f'{", ".join(str(c) for c in candidates)}, and {reason}. {_FASHION_MNIST_HELP}')


_FMNIST_CACHE: dict = {}
_FMNIST_LOCK = threading.Lock()


def load_fashion_mnist(directory, split: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images (N, 28, 28, 1) and int64 labels (N,) of 'train' or 'test' from the IDX files
  in `directory` (cached in memory after the first call)."""
  if split not in _FASHION_MNIST_SPLITS:
    raise DatasetError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
  directory = pathlib.Path(directory)
  key = (str(directory.resolve()), split)
  with _FMNIST_LOCK:
    if key not in _FMNIST_CACHE:
      img_stem, lab_stem = _FASHION_MNIST_SPLITS[split]
      images = read_idx(_idx_file(directory, img_stem) or directory / (img_stem + '.gz'))
      labels = read_idx(_idx_file(directory, lab_stem) or directory / (lab_stem + '.gz'))
      if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or (
          len(images) != len(labels)):
        raise DatasetError(f'Fashion-MNIST {split} files in {directory} are inconsistent: '
                           f'images {images.dtype} {images.shape}, labels {labels.shape}.')
      images.setflags(write=False)
      labels = labels.astype(np.int64)
      labels.setflags(write=False)
      _FMNIST_CACHE[key] = (images[..., None], labels)
    return _FMNIST_CACHE[key]


# --------------------------------------------------------------------------------------------
# Sources.
# --------------------------------------------------------------------------------------------


class ArraySource:
  """An in-memory dataset: uint8 images (N, H, W, C) and optional labels (N,)."""

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray] = None):
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f'ArraySource needs uint8 (N, H, W, C), got {images.dtype} '
                       f'{images.shape}.')
    if labels is not None and len(labels) != len(images):
      raise ValueError(f'{len(labels)} labels for {len(images)} images.')
    self.images = images
    self.labels = labels
    self._preprocessed = {}

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> tuple[np.ndarray, Optional[int]]:
    label = None if self.labels is None else int(self.labels[i])
    return self.images[i], label

  def preprocessed(self, image_size: int, channels: int) -> np.ndarray:
    """All images through `preprocess_images`, computed once per (size, channels)."""
    key = (image_size, channels)
    if key not in self._preprocessed:
      out = preprocess_images(self.images, image_size, channels)
      if out is self.images:
        out = out.view()
      out.setflags(write=False)
      self._preprocessed[key] = out
    return self._preprocessed[key]


def _default_tfds_dir() -> str:
  try:
    from tensorflow_datasets.core import constants  # pylint: disable=import-outside-toplevel
    return str(constants.DATA_DIR)
  except Exception:  # pylint: disable=broad-except
    return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def _tfds_error(name: str, tfds_name: str, split: str, data_dir: str, err: Exception) -> str:
  """A message that says what is wrong and the exact command that fixes it."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  shown_dir = data_dir or _default_tfds_dir()
  prepared, manual, where, builder_error = False, False, shown_dir, None
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir or None)
    prepared = builder.is_prepared()
    manual = bool(getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
    where = str(builder.data_dir)
  except Exception as e:  # pylint: disable=broad-except
    builder_error = e
  extras = _TFDS_PREPARE_EXTRAS.get(tfds_name.split('/')[0], '')
  dir_arg = f", data_dir='{shown_dir}'" if data_dir else ''
  prepare = (f'  pip install tensorflow-cpu{extras}\n'
             f'  python -c "import tensorflow_datasets as tfds; tfds.builder(\'{tfds_name}\''
             f'{dir_arg}).download_and_prepare(file_format=\'array_record\')"\n')
  orig = f'{type(err).__name__}: {str(err).strip()[:500]}'
  if not prepared:
    msg = (f"Dataset {name!r} (TFDS '{tfds_name}', split {split!r}) is not prepared under "
           f"data_dir '{shown_dir}'. ddpm-jax reads TFDS datasets in the ArrayRecord format "
           'without TensorFlow, but preparing one needs TensorFlow. Prepare it once with:\n')
    if manual:
      msg += (f"  # '{tfds_name}' needs a manual download first: follow "
              f"https://www.tensorflow.org/datasets/catalog/{tfds_name.split('/')[0]} and put "
              f"the files in '{os.path.join(shown_dir, 'downloads', 'manual')}'.\n")
    msg += prepare
    if data_dir:
      msg += f'then run with --config.data.data_dir={shown_dir}.'
    else:
      msg += ('then run again (this is TFDS\' default data_dir; pass '
              '--config.data.data_dir=DIR to use another).')
    if builder_error is not None:
      msg += f' (TFDS: {type(builder_error).__name__}: {str(builder_error).strip()[:300]})'
    return msg
  return (f"Dataset {name!r} (TFDS '{tfds_name}') is prepared at '{where}' but split {split!r} "
          f'could not be opened: {orig}\nRandom access needs the ArrayRecord format; if it was '
          'prepared as TFRecord or is corrupt, prepare it again into a fresh data_dir:\n'
          f'{prepare}')


class TfdsSource:
  """A prepared TFDS dataset (ArrayRecord) read with `tfds.data_source` (no TensorFlow)."""

  def __init__(self, name: str, tfds_name: str, split: str, data_dir: str = ''):
    try:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise DatasetError(f'Dataset {name!r} needs tensorflow-datasets: pip install '
                         f'tensorflow-datasets array_record ({e}).') from None
    self.name, self.tfds_name, self.split = name, tfds_name, split
    self.data_dir = data_dir
    try:
      self._ds = tfds.data_source(tfds_name, split=split, data_dir=data_dir or None,
                                  download=False)
      self._len = len(self._ds)
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(_tfds_error(name, tfds_name, split, data_dir, e)) from None

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> tuple[np.ndarray, Optional[int]]:
    try:
      example = self._ds[int(i)]
      image = np.asarray(example['image'])
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(
          f"Could not read example {i} of TFDS '{self.tfds_name}' split {self.split!r} "
          f"(data_dir '{self.data_dir or _default_tfds_dir()}'): {type(e).__name__}: {e}. "
          'The prepared files may be corrupt; prepare the dataset again.') from None
    label = example.get('label') if isinstance(example, dict) else None
    return _as_hwc(image), (None if label is None else int(label))


class FolderSource:
  """Every image file under `root` (recursive, sorted), decoded to RGB, or to L when
  `channels == 1`; 16-bit images are scaled, not clipped (`image_files.decode`). The first
  image that preprocessing to `image_size` would mostly crop away, and the first it would
  upscale more than 2x, are reported with a warning (once each: a folder of them would flood
  the log)."""

  def __init__(self, root: str, channels: int = 3, image_size: Optional[int] = None):
    if not root:
      raise DatasetError("config.data.dataset='folder' needs --config.data.data_dir=FOLDER, "
                         'a folder of images.')
    self.root = pathlib.Path(root).expanduser()
    if not self.root.is_dir():
      raise DatasetError(f"Image folder '{self.root}' does not exist (config.data.data_dir).")
    self.files = sorted(p for p in self.root.rglob('*')
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not self.files:
      raise DatasetError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                         f"'{self.root}' (config.data.data_dir).")
    self.channels = channels
    self.image_size = image_size
    self._reported = set()  # Kinds of `image_files.shape_warning` already logged.

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> tuple[np.ndarray, Optional[int]]:
    path = self.files[int(i)]
    try:
      array = image_files.decode(path, self.channels)
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(f"Could not decode image '{path}': {e}.") from None
    problem = image_files.shape_warning(array.shape[0], array.shape[1], self.image_size)
    if problem and problem[0] not in self._reported:
      self._reported.add(problem[0])  # (A race between loader threads costs a second line.)
      log.warning("Image '%s': %s (further such images in %s are not reported).", path,
                  problem[1], self.root)
    return _as_hwc(array), None


def _resolve(dataset: str, image_size: int) -> tuple[str, Optional[str]]:
  """config.data.dataset -> (kind, tfds name); kind is 'fashion_mnist', 'folder' or 'tfds'."""
  name = str(dataset).strip().lower()
  if name in ('fashion_mnist', 'folder'):
    return name, None
  if name in _TFDS_NAMES:
    return 'tfds', _TFDS_NAMES[name]
  if name == 'celeb_a_hq':
    res = next((r for r in _CELEBA_HQ_RESOLUTIONS if r >= image_size), 1024)
    return 'tfds', f'celeb_a_hq/{res}'
  if name.startswith('celeb_a_hq/') and name.split('/', 1)[1] in map(str,
                                                                     _CELEBA_HQ_RESOLUTIONS):
    return 'tfds', name
  if name.startswith('lsun/') and len(name) > len('lsun/'):
    return 'tfds', name
  raise ValueError(f'Unknown dataset {dataset!r} (config.data.dataset). Valid names: '
                   f'{", ".join(DATASETS)} (also celeb_a_hq/<resolution> and '
                   'lsun/<category>).')


def check_dataset_name(dataset: str, image_size: int = 32) -> None:
  """Raises ValueError naming config.data.dataset and the valid names if `dataset` is unknown
  (nothing is opened: the check runs before a workdir is touched)."""
  _resolve(dataset, image_size)


def _split_parts(split: str) -> list[str]:
  return [s.strip() for s in str(split).split('+') if s.strip()]


def open_source(data_config, split: Optional[str] = None):
  """The random-access source of `config.data` for `split` (default `config.data.split`)."""
  dataset, image_size, channels = data_config.dataset, data_config.image_size, data_config.channels
  data_dir = data_config.data_dir
  split = split or data_config.split
  kind, tfds_name = _resolve(dataset, image_size)
  if kind == 'tfds':
    return TfdsSource(dataset, tfds_name, split, data_dir)
  if kind == 'folder':
    root = pathlib.Path(data_dir).expanduser() if data_dir else None
    if root is not None and (root / split).is_dir():
      root = root / split
    return FolderSource(str(root) if root else '', channels, image_size)
  # Fashion-MNIST.
  if data_dir and (pathlib.Path(data_dir).expanduser() / 'fashion_mnist').is_dir():
    try:
      src = TfdsSource(dataset, 'fashion_mnist', split, data_dir)
      images = np.stack([src[i][0] for i in range(len(src))])
      labels = np.array([src[i][1] for i in range(len(src))], dtype=np.int64)
      return ArraySource(images, labels)
    except DatasetError as e:
      log.warning('Not using the TFDS copy of Fashion-MNIST in %s: %s', data_dir, e)
  directory = find_fashion_mnist_dir(data_dir)
  parts = [load_fashion_mnist(directory, s) for s in _split_parts(split)]
  if len(parts) == 1:
    return ArraySource(*parts[0])
  return ArraySource(np.concatenate([p[0] for p in parts]),
                     np.concatenate([p[1] for p in parts]))


# --------------------------------------------------------------------------------------------
# Batching.
# --------------------------------------------------------------------------------------------


def _check_sharding(global_batch_size: int, process_index: int, process_count: int) -> None:
  if int(global_batch_size) < 1:
    raise ValueError(f'global_batch_size must be positive, got {global_batch_size}.')
  if int(process_count) < 1 or not 0 <= int(process_index) < int(process_count):
    raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
  if global_batch_size % process_count:
    raise ValueError(f'The global batch size {global_batch_size} is not divisible by the '
                     f'process count {process_count}; use a multiple of {process_count}.')


class TrainIterator(Iterator[np.ndarray]):
  """Infinite iterator of this process's float32 batches (B / P, S, S, C) in [-1, 1].

  `next()` yields the batches of steps start_step, start_step + 1, ...; `get_batch(step)`
  computes any step's batch directly (the same array `next()` gives for that step). In-memory
  sources that need no resizing are preprocessed once and batched by fancy indexing in the
  calling thread; other sources are decoded / resized by a thread pool `prefetch` steps ahead.
  """

  def __init__(self, source, *, global_batch_size: int, seed: int, image_size: int,
               channels: int, random_flip: bool = True, start_step: int = 0,
               process_index: int = 0, process_count: int = 1,
               num_workers: Optional[int] = None, prefetch: Optional[int] = None,
               num_classes: int = 0):
    _check_sharding(global_batch_size, process_index, process_count)
    self.num_classes = int(num_classes)
    if self.num_classes and isinstance(source, ArraySource) and source.labels is None:
      raise DatasetError(_NO_LABELS)
    if int(start_step) < 0:
      raise ValueError(f'start_step must be >= 0, got {start_step}.')
    if len(source) == 0:
      raise DatasetError('The dataset is empty.')
    self.source = source
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.image_size, self.channels = int(image_size), int(channels)
    self.random_flip = bool(random_flip)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.local_batch_size = self.global_batch_size // self.process_count
    self._offset = self.process_index * self.local_batch_size
    self.num_examples = len(source)
    # In-memory sources are preprocessed once as a whole unless that needs resizing (slow for
    # many images): then each batch is preprocessed like a streaming source's.
    self._images = self._raw = None
    if isinstance(source, ArraySource):
      if _needs_resize(*source.images.shape[1:3], self.image_size):
        self._raw = source.images
      else:
        self._images = source.preprocessed(self.image_size, self.channels)
    self._perms = collections.OrderedDict()
    self._perm_lock = threading.Lock()
    self._next_step = int(start_step)
    self._num_workers = max(1, num_workers or min(8, os.cpu_count() or 1))
    self._prefetch = max(1, prefetch or 2 * self._num_workers)
    self._executor = None
    self._pending = collections.deque()  # (step, future), consecutive from _next_step.

  @property
  def step(self) -> int:
    """The step whose batch `next()` returns next."""
    return self._next_step

  def permutation(self, epoch: int) -> np.ndarray:
    """The order (dataset indices) in which epoch `epoch` visits the dataset."""
    with self._perm_lock:
      perm = self._perms.get(epoch)
    if perm is None:
      rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SHUFFLE_STREAM, epoch]))
      perm = rng.permutation(self.num_examples)
      with self._perm_lock:
        self._perms[epoch] = perm
        while len(self._perms) > 4:
          self._perms.popitem(last=False)
    return perm

  def example_indices(self, step: int) -> np.ndarray:
    """Dataset indices of this process's examples in batch `step`."""
    pos = (np.int64(step) * self.global_batch_size + self._offset
           + np.arange(self.local_batch_size, dtype=np.int64))
    epochs, pos = np.divmod(pos, self.num_examples)
    out = np.empty(self.local_batch_size, np.int64)
    for e in np.unique(epochs):
      m = epochs == e
      out[m] = self.permutation(int(e))[pos[m]]
    return out

  def flips(self, step: int) -> np.ndarray:
    """bool (B / P,): which of this process's examples in batch `step` are flipped."""
    if not self.random_flip:
      return np.zeros(self.local_batch_size, bool)
    mask = flip_mask(self.seed, step, self.global_batch_size)
    return mask[self._offset:self._offset + self.local_batch_size]

  def _uint8_and_labels(self, step: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}.')
    idx = self.example_indices(step)
    labels = None
    if self._images is not None or self._raw is not None:
      if self._images is not None:
        batch = self._images[idx]
      else:
        batch = preprocess_images(self._raw[idx], self.image_size, self.channels)
      if self.num_classes:
        labels = np.asarray(self.source.labels)[idx]
    else:
      examples = [self.source[i] for i in idx]
      batch = np.stack([preprocess_image(im, self.image_size, self.channels)
                        for im, _ in examples])
      if self.num_classes:
        if any(lab is None for _, lab in examples):
          raise DatasetError(_NO_LABELS)
        labels = np.array([lab for _, lab in examples], np.int64)
    if labels is not None:
      labels = self._check_labels(labels)
    return flip_images(batch, self.flips(step)), labels

  def _check_labels(self, labels: np.ndarray) -> np.ndarray:
    bad = (labels < 0) | (labels >= self.num_classes)
    if np.any(bad):
      raise DatasetError(
          f'Label {int(labels[bad][0])} is outside [0, {self.num_classes}): set '
          f'config.model.num_classes to the number of classes of the dataset.')
    return labels.astype(np.int32)

  def get_batch(self, step: int):
    """This process's batch `step`: float32 (B / P, S, S, C) in [-1, 1]; for a
    class-conditional iterator (`num_classes > 0`) the dict `{'image': that, 'label': int32
    (B / P,)}`."""
    images, labels = self._uint8_and_labels(step)
    if labels is None:
      return to_float(images)
    return {'image': to_float(images), 'label': labels}

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> np.ndarray:
    if self._images is not None:
      batch = self.get_batch(self._next_step)
      self._next_step += 1
      return batch
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(
          self._num_workers, thread_name_prefix='ddpm_input')
    self._fill()
    step, future = self._pending.popleft()
    assert step == self._next_step
    batch = future.result()
    self._next_step += 1
    self._fill()
    return batch

  def _fill(self) -> None:
    while len(self._pending) < self._prefetch:
      step = self._next_step + len(self._pending)
      self._pending.append((step, self._executor.submit(self.get_batch, step)))

  def close(self) -> None:
    """Stops the prefetch threads (queued work is cancelled)."""
    for _, f in self._pending:
      f.cancel()
    self._pending.clear()
    if self._executor is not None:
      self._executor.shutdown(wait=False, cancel_futures=True)
      self._executor = None

  def __enter__(self) -> 'TrainIterator':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


# --------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------


def create_train_iterator(data_config, global_batch_size: int, seed: int, start_step: int = 0,
                          process_index: int = 0, process_count: int = 1,
                          num_classes: int = 0, source=None) -> TrainIterator:
  """This process's infinite stream of training batches of `config.data.split`, from step
  `start_step` on: float32 (global_batch_size // process_count, S, S, C) in [-1, 1], or with
  `num_classes > 0` dicts `{'image': that, 'label': int32 (B / P,)}` (labels checked to lie in
  [0, num_classes)). Use `.get_batch(step)` for a given step's batch. See the module docstring
  for the order. `source`: that split already opened (`open_source`), e.g. to check the data
  before anything else."""
  _check_sharding(global_batch_size, process_index, process_count)
  if source is None:
    source = open_source(data_config)
  return TrainIterator(
      source, global_batch_size=global_batch_size, seed=seed,
      image_size=data_config.image_size, channels=data_config.channels,
      random_flip=data_config.random_flip, start_step=start_step,
      process_index=process_index, process_count=process_count, num_classes=num_classes)


def load_split(data_config, split: str, max_examples: Optional[int] = None) -> np.ndarray:
  """The first `max_examples` (all if None) images of `split` in dataset order, preprocessed
  (channels, crop, resize / pad; no flip): uint8 (N, S, S, C)."""
  image_size, channels = data_config.image_size, data_config.channels
  source = open_source(data_config, split)
  n = len(source) if max_examples is None else max(0, min(int(max_examples), len(source)))
  if isinstance(source, ArraySource):
    return np.array(preprocess_images(source.images[:n], image_size, channels))
  out = np.empty((n, image_size, image_size, channels), np.uint8)

  def work(i):
    out[i] = preprocess_image(source[i][0], image_size, channels)

  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
    for _ in ex.map(work, range(n), chunksize=64):
      pass
  return out
