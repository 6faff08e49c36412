"""Model outputs as image files: uint8 quantisation, grids, PNG, GIF and .npz files, and the
matplotlib figures of runs and sweeps."""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
from PIL import Image


def to_uint8(x) -> np.ndarray:
  """Images in [-1, 1] to uint8 in [0, 255]: round((x + 1) * 127.5), clipped."""
  x = np.asarray(x, dtype=np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int | None = None, padding: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 images (N, H, W, C) into one (rows*(H+p)+p, cols*(W+p)+p, C) image."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'make_grid expects (N, H, W, C) images, got shape {images.shape}.')
  n, h, w, c = images.shape
  ncols = ncols or max(1, int(math.ceil(math.sqrt(n))))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c),
                 pad_value, dtype=images.dtype)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def write_atomic(path: str, write) -> str:
  """`write(tmp)` then a rename to `path`, creating the folder: a killed run leaves no
  half-written file. `tmp` keeps the extension (np.savez appends '.npz' to a name without it).
  Returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp{os.path.splitext(path)[1]}'
  write(tmp)
  os.replace(tmp, path)
  return path


@contextlib.contextmanager
def figure(path: str, rows: int = 1, cols: int = 1, panel: tuple = (4.2, 3.6), dpi: int = 100):
  """Yields a (rows, cols) array of matplotlib axes, each `panel` inches (width, height), and
  writes the figure to `path` as PNG when the block ends, atomically (`write_atomic`)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (only figures)
  fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout='constrained')
  yield fig.subplots(rows, cols, squeeze=False)
  write_atomic(path, lambda tmp: fig.savefig(tmp, format='png', dpi=dpi))


def _pil(image) -> Image.Image:
  image = np.asarray(image)
  return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)


def save_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 (H, W, 1 or 3) image as PNG, creating the folder; returns the path."""
  return write_atomic(path, lambda tmp: _pil(image).save(tmp, format='PNG'))


def trajectory_grid(traj_uint8: np.ndarray, final_uint8: np.ndarray | None = None) -> np.ndarray:
  """(K, B, H, W, C) uint8 frames (+ optional final (B, H, W, C)) -> a grid with one row per
  sample and one column per frame."""
  traj = np.asarray(traj_uint8)
  if final_uint8 is not None:
    traj = np.concatenate([traj, np.asarray(final_uint8)[None]], axis=0)
  k, b = traj.shape[:2]
  return make_grid(traj.transpose(1, 0, 2, 3, 4).reshape((k * b,) + traj.shape[2:]), ncols=k)


def save_gif(path: str, frames_uint8, duration_ms: int = 300, scale: int = 1) -> str:
  """Animated GIF of uint8 (H, W, 1 or 3) frames (looping; the last frame held 4x longer)."""
  pics = [_pil(np.asarray(f).repeat(scale, axis=0).repeat(scale, axis=1)) for f in frames_uint8]
  durations = [duration_ms] * (len(pics) - 1) + [4 * duration_ms]
  return write_atomic(path, lambda tmp: pics[0].save(
      tmp, format='GIF', save_all=True, append_images=pics[1:], duration=durations, loop=0))


GRID_MIN_WIDTH = 512  # Pixels: a grid of 32x32 images is shown at a size a person can see.


def upscale(image: np.ndarray, min_width: int = GRID_MIN_WIDTH, max_factor: int = 8) -> np.ndarray:
  """`image` (H, W, C) repeated k times along both axes (nearest neighbour, pixels stay sharp
  squares), with the smallest integer k <= max_factor that makes it at least `min_width` wide."""
  factor = min(max_factor, max(1, math.ceil(min_width / image.shape[1])))
  return image if factor == 1 else image.repeat(factor, axis=0).repeat(factor, axis=1)


def save_grid(path: str, images_uint8: np.ndarray, ncols: int | None = None) -> str:
  """`make_grid`, `upscale` to at least GRID_MIN_WIDTH pixels wide, then `save_png`."""
  return save_png(path, upscale(make_grid(images_uint8, ncols)))


def save_npz(path: str, images_uint8: np.ndarray, labels=None, **extra) -> str:
  """Writes uint8 samples to `path` atomically, in the layout of the improved-diffusion / ADM
  evaluator (and `python -m ddpm_jax.fid`): `arr_0` (N, H, W, C) uint8 and, when `labels` is
  given (class-conditional samples), `arr_1` (N,) int. `extra` arrays are stored beside them."""
  arrays = {'arr_0': np.asarray(images_uint8, dtype=np.uint8)}
  if labels is not None:
    arrays['arr_1'] = np.asarray(labels)
    if arrays['arr_1'].shape != arrays['arr_0'].shape[:1]:
      raise ValueError(f'{len(arrays["arr_1"])} labels for {len(arrays["arr_0"])} images.')
  return write_atomic(path, lambda tmp: np.savez(tmp, **arrays, **extra))
