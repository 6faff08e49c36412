"""Inputs of `--mode=sample` that are images: those of the editing modes
(`--config.sample.mode=inpaint|colorize|edit`) from a folder (`config.sample.input_dir`) or the
dataset's `config.sample.data_split` (also the inputs of interpolate and reconstruct), and the
inpainting masks (`config.sample.mask`: a built-in shape, a mask PNG or a folder of them).

Masks are 1 (white in a PNG) on the pixels to keep and 0 (black) on those to generate, as in
RePaint's keep-masks. Every bad input is refused before any compilation with one `InputError`
whose message names the file and what is wrong.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image, ImageDraw

from ddpm_jax import data
from ddpm_jax.data.folder import decode
from ddpm_jax.errors import InputError

MASK_SHAPES = ('center', 'left', 'strokes')


# ---------------------------------------------------------------------------------------------
# Built-in masks: float32 (size, size), 1 = keep, 0 = generate.


def random_strokes(size: int, seed: int) -> np.ndarray:
  """Generates 2-4 random brush strokes (polylines of 3-6 points, width size / 10 to size / 6,
  not anti-aliased), a pure function of `seed`."""
  rng = np.random.default_rng(seed)
  canvas = Image.new('L', (size, size), 255)
  draw = ImageDraw.Draw(canvas)
  for _ in range(rng.integers(2, 5)):
    point = rng.uniform(0.15, 0.85, 2) * size
    points = [tuple(point)]
    for _ in range(rng.integers(2, 6)):
      angle = rng.uniform(0, 2 * np.pi)
      point = np.clip(point + rng.uniform(0.15, 0.35) * size * np.array(
          [np.cos(angle), np.sin(angle)]), 0, size - 1)
      points.append(tuple(point))
    width = max(1, int(round(rng.uniform(size / 10, size / 6))))
    draw.line(points, fill=0, width=width, joint='curve')
  return (np.asarray(canvas) > 127).astype(np.float32)


def builtin_masks(shape: str, size: int, num: int, seed: int = 0) -> np.ndarray:
  """(num, size, size, 1) masks of a built-in `shape`: 'center' generates the centred square
  of half the side, 'left' the left half; 'strokes' differ per image (seed, i)."""
  if shape not in MASK_SHAPES:
    raise InputError(f'Unknown mask shape {shape!r}; built-in shapes: {", ".join(MASK_SHAPES)}.')
  if shape == 'strokes':
    return np.stack([random_strokes(size, seed * 1_000_003 + i) for i in range(num)])[..., None]
  mask = np.ones((num, size, size, 1), np.float32)
  lo, half = size // 4, size // 2
  if shape == 'center':
    mask[:, lo:lo + half, lo:lo + half] = 0.0
  else:
    mask[:, :, :half] = 0.0
  return mask


# ---------------------------------------------------------------------------------------------
# Mask PNGs.


def read_mask(path, size: int) -> np.ndarray:
  """One mask file -> float32 (size, size): white (255) = keep, black (0) = generate."""
  try:
    a = decode(path, 1)  # 16-bit masks scaled to 8 bits.
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f'Could not read mask {path}: {e}') from None
  if a.shape != (size, size):
    raise InputError(f'Mask {path} is {a.shape[1]}x{a.shape[0]} but the images are '
                     f'{size}x{size} (config.data.image_size): a mask must have the size of '
                     'the images.')
  levels = np.unique(a)
  if not set(levels.tolist()) <= {0, 255}:
    shown = ', '.join(map(str, levels[:6])) + (', ...' if len(levels) > 6 else '')
    raise InputError(f'Mask {path} is not binary: it has {len(levels)} grey levels ({shown}); '
                     'use black (0) for the pixels to generate and white (255) for those '
                     'to keep.')
  return (a == 255).astype(np.float32)


def load_masks(spec: str, size: int, num: int, seed: int = 0) -> np.ndarray:
  """(num, size, size, 1) masks from `config.sample.mask`: a built-in shape, one mask file
  (used for every image) or a folder of them (sorted, assigned to the images in order and
  cycled when there are fewer masks than images)."""
  if spec in MASK_SHAPES:
    return builtin_masks(spec, size, num, seed)
  path = pathlib.Path(spec).expanduser()
  if path.is_dir():
    files = data.list_images(path)
    if not files:
      raise InputError(f'No mask images ({", ".join(data.IMAGE_EXTENSIONS)}) in '
                       f'{path} (config.sample.mask).')
  elif path.is_file():
    files = [path]
  else:
    raise InputError(f'config.sample.mask={spec!r} is neither a built-in shape '
                     f'({", ".join(MASK_SHAPES)}) nor a mask file or folder.')
  masks = [read_mask(f, size) for f in files[:num]]
  return np.stack([masks[i % len(masks)] for i in range(num)])[..., None]


# ---------------------------------------------------------------------------------------------
# Images.


def read_image(path, image_size: int, channels: int, allow_grey: bool) -> np.ndarray:
  """One image file -> uint8 (image_size, image_size, channels), decoded (16-bit files
  included, `data.folder.decode`), cropped and resized as the training data. A grey image for
  a colour model is refused unless `allow_grey` (colorization)."""
  try:
    with Image.open(path) as im:
      grey = len([b for b in im.getbands() if b != 'A']) == 1 and im.mode != 'P'
    array = decode(path, channels)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f'Could not read image {path}: {e}') from None
  if grey and channels == 3 and not allow_grey:
    raise InputError(f'Image {path} is grayscale but the model generates colour images '
                     '(config.data.channels=3); give colour images, or colour grayscale ones '
                     'with --config.sample.mode=colorize.')
  return data.preprocess_image(array, image_size, channels)


def load_images(config, num: int) -> np.ndarray:
  """uint8 (n, S, S, C) inputs of `config.sample.mode`: the first `num` images of the folder
  `config.sample.input_dir` (sorted; fewer if it holds fewer), or of the dataset's
  `config.sample.data_split` when it is empty."""
  d, s = config.data, config.sample
  if not s.input_dir:
    return split_images(config, num)
  path = pathlib.Path(s.input_dir).expanduser()
  if not path.is_dir():
    raise InputError(f'config.sample.input_dir={s.input_dir!r} is not a folder.')
  files = data.list_images(path)[:num]
  if not files:
    raise InputError(f'No images ({", ".join(data.IMAGE_EXTENSIONS)}) in {path} '
                     '(config.sample.input_dir).')
  return np.stack([read_image(f, d.image_size, d.channels, allow_grey=s.mode == 'colorize')
                   for f in files])


def split_images(config, num: int) -> np.ndarray:
  """uint8 (num, S, S, C): the first `num` images of the dataset's `config.sample.data_split`;
  InputError when the split holds fewer."""
  images = data.load_split(config.data, config.sample.data_split, max_examples=num)
  if len(images) < num:
    raise InputError(f'The {config.sample.data_split!r} split (config.sample.data_split) has '
                     f'{len(images)} images; {num} are needed (config.sample.num).')
  return images
