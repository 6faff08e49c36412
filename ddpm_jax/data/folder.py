"""A folder of image files as a dataset, labelled by class subfolders when it has them.

Every png/jpg/jpeg/webp/bmp file under the folder (recursively, sorted by path) is an example.
When every image sits inside a subfolder (`data_dir/<class>/...`), the subfolders are the
classes: sorted by name, the label of an image is the index of its top-level subfolder, so a
class-conditional model can be trained on one's own images.

Decoding (`decode`) honours the EXIF orientation and scales high-bit-depth images to [0, 255]
by their bit depth: PIL's `convert('L')` clips 16-bit grey images (`I;16`, or `I` in older
Pillow) to 255 instead of scaling them, which would turn a folder of 16-bit PNGs white.
16-bit values are scaled by 255 / 65535 (x / 257, rounded), 32-bit integers by
255 / (2**32 - 1), float images from [0, 1] (or [0, 255] when larger). 8-bit images go through
PIL's conversions unchanged.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
from PIL import Image, ImageOps

from ddpm_jax.data.preprocess import as_hwc
from ddpm_jax.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')
# Images whose long side is more than this many times the short side lose most of their
# pixels to the centre crop: reading them warns.
MAX_ASPECT = 2.0


def list_images(root: pathlib.Path) -> list[pathlib.Path]:
  """The image files under `root`, recursively, sorted by path."""
  return sorted(p for p in root.rglob('*')
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
  """The pixels of a PIL image of `mode` (as `np.asarray(image)`) scaled to uint8 [0, 255]."""
  a = np.asarray(array)
  if mode.startswith('I;16') or (mode == 'I' and a.size and a.max() <= 65535 and a.min() >= 0):
    scaled = a.astype(np.float64) * (255.0 / 65535.0)
  elif mode == 'I':
    scaled = (a.astype(np.float64) - np.iinfo(np.int32).min) * (255.0 / (2.0 ** 32 - 1))
  elif mode == 'F':
    scaled = a.astype(np.float64) * (255.0 if a.size and a.max() <= 1.0 else 1.0)
  else:
    raise ValueError(f'to_uint8 scales I;16, I and F images, not mode {mode!r}.')
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode(path, channels: int) -> np.ndarray:
  """The image at `path`, EXIF-rotated, as uint8 (H, W) for `channels == 1` or (H, W, 3)."""
  with Image.open(path) as im:
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith('I') or im.mode == 'F':
      grey = to_uint8(np.asarray(im), im.mode)
      return grey if channels == 1 else np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert('L' if channels == 1 else 'RGB'))


def shape_warning(height: int, width: int, image_size: int | None = None
                  ) -> tuple[str, str] | None:
  """(kind, why) when preprocessing an H x W image (centre crop to a square, resize to
  `image_size`) loses or invents most of it, else None. Kinds: 'empty'; 'aspect', a ratio
  beyond `MAX_ASPECT`; 'upscaled', a square side less than half of `image_size`."""
  short, long = min(height, width), max(height, width)
  if short < 1:
    return 'empty', f'it is empty ({height}x{width})'
  if long > MAX_ASPECT * short:
    return 'aspect', (f'it is {height}x{width}: the centre crop keeps only '
                      f'{100 * short / long:.2g}% of it')
  if image_size and 2 * short < image_size:
    return 'upscaled', (f'it is {height}x{width}: it is upscaled {image_size / short:.1f}x to '
                        f'{image_size}')
  return None


class FolderSource:
  """`source[i] -> (uint8 (H, W, C) image, label or None)` over the images under `root`,
  decoded to RGB, or to grey when `channels == 1`; `classes` as the module docstring says.

  The first image that preprocessing to `image_size` would mostly crop away, and the first it
  would upscale more than 2x, are reported with a warning (once each: a folder of them would
  flood the log)."""

  def __init__(self, root: str, channels: int = 3, image_size: int | None = None):
    if not root:
      raise DatasetError("config.data.dataset='folder' needs --config.data.data_dir=FOLDER, "
                         'a folder of images.')
    self.root = pathlib.Path(root).expanduser()
    if not self.root.is_dir():
      raise DatasetError(f"Image folder '{self.root}' does not exist (config.data.data_dir).")
    self.files = list_images(self.root)
    if not self.files:
      raise DatasetError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                         f"'{self.root}' (config.data.data_dir).")
    self.channels, self.image_size = channels, image_size
    tops = [p.relative_to(self.root).parts for p in self.files]
    self.classes, self.labels = None, None
    if all(len(parts) > 1 for parts in tops):
      self.classes = tuple(sorted({parts[0] for parts in tops}))
      index = {name: k for k, name in enumerate(self.classes)}
      self.labels = np.array([index[parts[0]] for parts in tops], np.int64)
    self._reported = set()  # Kinds of `shape_warning` already logged.

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int | None]:
    path = self.files[int(i)]
    try:
      array = decode(path, self.channels)
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(f"Could not decode image '{path}': {e}.") from None
    problem = shape_warning(array.shape[0], array.shape[1], self.image_size)
    if problem and problem[0] not in self._reported:
      self._reported.add(problem[0])  # (A race between loader threads costs a second line.)
      log.warning("Image '%s': %s (further such images in %s are not reported).", path,
                  problem[1], self.root)
    return as_hwc(array), None if self.labels is None else int(self.labels[int(i)])
