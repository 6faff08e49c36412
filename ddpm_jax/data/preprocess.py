"""Preprocessing of one image and of a batch: channels, centre crop, pad or resize, [-1, 1].

An image becomes a training example in three steps (`preprocess_image`): channel conversion
(`convert_channels`), centre crop to a square (`center_crop`), then to `image_size` by zero
padding when the square is smaller by a small even margin of at most image_size / 8
(Fashion-MNIST 28 -> 32 gets a 2-pixel black border instead of being blurred by upsampling),
else by antialiased resizing (`resize`, PIL Lanczos). The pipeline then mirrors it left-right with
probability 1/2 and scales batches to [-1, 1] (`to_float`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def as_nhwc(images) -> np.ndarray:
  """uint8 images (N, H, W) or (N, H, W, C) as (N, H, W, C); anything else is a ValueError."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f'Expected uint8 images (N, H, W[, C]), got {images.dtype} {images.shape}.')
  return images


def as_hwc(image) -> np.ndarray:
  """A uint8 image (H, W) or (H, W, C) as (H, W, C); anything else is a ValueError."""
  return as_nhwc(np.asarray(image)[None])[0]


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


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes one uint8 (H, W, C) image to (size, size, C) with PIL's Lanczos filter, which
  widens its support when downsampling (antialiased)."""
  c = image.shape[-1]
  pil = Image.fromarray(image[:, :, 0] if c == 1 else image, mode='L' if c == 1 else 'RGB')
  out = np.asarray(pil.resize((size, size), resample=Image.Resampling.LANCZOS))
  return out[:, :, None] if c == 1 else out


def _pads(s: int, size: int) -> bool:
  """Whether a square of side `s` is zero-padded (not resized) to `size`: only for a small even
  margin of at most size / 8 (Fashion-MNIST 28 -> 32); anything smaller is upscaled."""
  return s < size and (size - s) % 2 == 0 and size - s <= size // 8


def needs_resize(height: int, width: int, size: int) -> bool:
  """Whether `preprocess_image` resizes (rather than pads or keeps) an H x W image."""
  s = min(height, width)
  return s != size and not _pads(s, size)


def preprocess_image(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """One uint8 image (H, W[, C]) -> uint8 (image_size, image_size, channels): channels, crop,
  then pad or resize (module docstring)."""
  image = center_crop(convert_channels(as_hwc(image), channels))
  if needs_resize(*image.shape[:2], image_size):  # Without the batch path's copy.
    return resize(image, image_size)
  return preprocess_images(image[None], image_size, channels)[0]


def preprocess_images(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
  """`preprocess_image` over a uint8 array (N, H, W[, C]) of same-sized images, vectorised
  where possible (channels, crop and pad are whole-array operations)."""
  images = center_crop(convert_channels(as_nhwc(images), channels))
  s = images.shape[1]
  if _pads(s, image_size):  # A black border of (image_size - s) / 2 pixels on each side.
    p = (image_size - s) // 2
    images = np.pad(images, [(0, 0), (p, p), (p, p), (0, 0)])
  elif s != image_size:
    images = np.stack([resize(im, image_size) for im in images]) if len(images) else np.zeros(
        (0, image_size, image_size, images.shape[-1]), np.uint8)
  return np.ascontiguousarray(images)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 -> float32 `x / 127.5 - 1`: 0 -> -1.0 and 255 -> 1.0 exactly."""
  out = np.asarray(images).astype(np.float32)
  out /= np.float32(127.5)
  out -= np.float32(1.0)
  return out
