"""Which source reads `config.data`, and the in-memory source.

A source is random access: `len(source)`, `source[i] -> (uint8 (H, W, C) image, int label or
None)`, and `source.classes`, the class names (labels index them) or None for a dataset
without labels. `config.data.dataset` chooses it:

* `fashion_mnist`: a prepared tfds copy under `config.data.data_dir` if there is one, else the
  IDX files (`fashion_mnist.find_dir`), held in memory (70k images of 28x28x1).
* `cifar10`, `oxford_flowers102`, `celeb_a`, `celeb_a_hq` (tfds `celeb_a_hq/<res>`, the
  smallest prepared resolution >= image_size; `celeb_a_hq/256` may be named explicitly) and
  `lsun/church` (tfds `lsun/church_outdoor`; any `lsun/<category>` is passed through): a
  prepared tfds split (`TfdsSource`).
* `folder`: the images under `config.data.data_dir` (`FolderSource`); if `data_dir/<split>` is
  a folder, the split reads only that folder.

A split may join parts with '+' where the source allows it (Fashion-MNIST's 'train+test').
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from ddpm_jax.data import fashion_mnist
from ddpm_jax.data.folder import FolderSource
from ddpm_jax.data.preprocess import as_nhwc, preprocess_images
from ddpm_jax.data.tfds_source import TfdsSource
from ddpm_jax.errors import DatasetError

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


class ArraySource:
  """An in-memory dataset: uint8 images (N, H, W, C), optional labels (N,) and their class
  names (by default '0' ... str(max label))."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None = None,
               classes: tuple[str, ...] | None = None):
    images = as_nhwc(images)
    if labels is not None and len(labels) != len(images):
      raise ValueError(f'{len(labels)} labels for {len(images)} images.')
    self.images, self.labels = images, labels
    if labels is not None and classes is None:
      classes = tuple(str(k) for k in range(int(np.max(labels, initial=-1)) + 1))
    self.classes = None if labels is None else tuple(classes)
    self._preprocessed = {}

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int | None]:
    return self.images[i], None if self.labels is None else int(self.labels[i])

  def preprocessed(self, image_size: int, channels: int) -> 'ArraySource':
    """This source with every image through `preprocess_images`, computed once per (size,
    channels), read-only."""
    key = (image_size, channels)
    if key not in self._preprocessed:
      out = preprocess_images(self.images, image_size, channels)
      out = out.view() if out is self.images else out
      out.setflags(write=False)
      self._preprocessed[key] = ArraySource(out, self.labels, self.classes)
    return self._preprocessed[key]


def resolve_dataset(dataset: str, image_size: int) -> tuple[str, str | None]:
  """config.data.dataset -> (kind, tfds name); kind is 'fashion_mnist', 'folder' or 'tfds'.
  Raises ValueError naming config.data.dataset and the valid names if `dataset` is unknown
  (nothing is opened: the check runs before a workdir is touched)."""
  name = str(dataset).strip().lower()
  if name in ('fashion_mnist', 'folder'):
    return name, None
  if name in _TFDS_NAMES:
    return 'tfds', _TFDS_NAMES[name]
  if name == 'celeb_a_hq':
    res = next((r for r in _CELEBA_HQ_RESOLUTIONS if r >= image_size), 1024)
    return 'tfds', f'celeb_a_hq/{res}'
  if name in {f'celeb_a_hq/{r}' for r in _CELEBA_HQ_RESOLUTIONS}:
    return 'tfds', name
  if name.startswith('lsun/') and len(name) > len('lsun/'):
    return 'tfds', name
  raise ValueError(f'Unknown dataset {dataset!r} (config.data.dataset). Valid names: '
                   f'{", ".join(DATASETS)} (also celeb_a_hq/<resolution> and '
                   'lsun/<category>).')


def _fashion_mnist(data_dir: str, split: str) -> ArraySource:
  if data_dir and (pathlib.Path(data_dir).expanduser() / 'fashion_mnist').is_dir():
    try:
      src = TfdsSource('fashion_mnist', 'fashion_mnist', split, data_dir)
      images, labels = zip(*(src[i] for i in range(len(src))))
      return ArraySource(np.stack(images), np.array(labels, np.int64), fashion_mnist.CLASSES)
    except DatasetError as e:
      log.warning('Not using the TFDS copy of Fashion-MNIST in %s: %s', data_dir, e)
  directory = fashion_mnist.find_dir(data_dir)
  parts = [fashion_mnist.load(directory, s.strip()) for s in split.split('+') if s.strip()]
  images, labels = parts[0] if len(parts) == 1 else map(np.concatenate, zip(*parts))
  return ArraySource(images, labels, fashion_mnist.CLASSES)  # One split: no copy.


def open_source(data_config, split: str | None = None):
  """The random-access source of `config.data` for `split` (default `config.data.split`)."""
  data_dir = str(data_config.data_dir or '')
  split = split or data_config.split
  kind, tfds_name = resolve_dataset(data_config.dataset, int(data_config.image_size))
  if kind == 'tfds':
    return TfdsSource(data_config.dataset, tfds_name, split, data_dir)
  if kind == 'folder':
    split_dir = pathlib.Path(data_dir).expanduser() / split
    root = str(split_dir) if data_dir and split_dir.is_dir() else data_dir
    return FolderSource(root, int(data_config.channels), int(data_config.image_size))
  return _fashion_mnist(data_dir, split)

