"""One image file decoded to uint8 pixels, whatever its bit depth, and what preprocessing will do
to its shape.

PIL's `convert('L')` clips 16-bit grey images (`I;16`, or `I` in older Pillow) to 255 instead of
scaling them, which turns a whole folder of 16-bit PNGs white. Here high-bit-depth modes are
scaled to [0, 255] by their bit depth: 16-bit values by 255 / 65535 (x / 257, rounded), 32-bit
integers by 255 / (2**32 - 1), float images from [0, 1] (or [0, 255] when larger). 8-bit
images go through PIL's conversions unchanged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Images whose long side is more than this many times the short side lose most of their
# pixels to the centre crop: preprocessing warns about them.
MAX_ASPECT = 2.0


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
