"""A small Fashion-MNIST classifier whose penultimate features measure sample quality offline.

Where the FID Inception weights are not available, ddpm-jax reports **FD-FMNIST**: the Fréchet
distance between the feature statistics of generated and real Fashion-MNIST images in the
128-d penultimate layer of this classifier. It is a separately named metric, comparable only
with itself (never with FID).

The classifier is trained deterministically (fixed seed, fixed data order, CPU float32); its
parameters are shipped in `fmnist_classifier.npz` next to this file so that every user
measures with the same network. `python tools/train_fmnist_classifier.py` retrains it and
rewrites that file.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'fmnist_classifier.npz')
IMAGE_SIZE = 32
FEATURE_DIM = 128


class FashionClassifier(nn.Module):
  """conv(16) → pool → conv(32) → pool → conv(64)x2 → pool → flatten → dense(128) → dense(10).

  Input: (B, 32, 32, 1) float images in [-1, 1] (Fashion-MNIST zero-padded from 28 to 32, as
  the diffusion models see it). Returns (features (B, 128), logits (B, 10)).
  """

  @nn.compact
  def __call__(self, x):
    for width in (16, 32):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(64, (3, 3))(x))
    x = nn.relu(nn.Conv(64, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2)).reshape((x.shape[0], -1))
    features = nn.Dense(FEATURE_DIM, name='features')(x)
    logits = nn.Dense(10, name='logits')(nn.relu(features))
    return features, logits


def to_input(images_uint8) -> jnp.ndarray:
  x = jnp.asarray(images_uint8)
  if x.ndim == 3:
    x = x[..., None]
  if x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
    raise ValueError(f'The Fashion-MNIST classifier takes (N, 32, 32, 1) uint8 images, got '
                     f'{tuple(x.shape)}.')
  return x.astype(jnp.float32) / 127.5 - 1.0


def load_params(path: str = WEIGHTS_PATH):
  """The shipped (or given) classifier parameters."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'Fashion-MNIST classifier weights not found at {path}; recreate them with '
        f'`python tools/train_fmnist_classifier.py`.')
  with np.load(path) as f:
    flat = {tuple(k.split('/')): jnp.asarray(f[k]) for k in f.files}
  return traverse_util.unflatten_dict(flat)


@jax.jit
def _apply(params, x):
  return FashionClassifier().apply({'params': params}, x)


def features_and_logits(params, images_uint8, batch_size: int = 1000):
  """float64 (features (N, 128), logits (N, 10)) of uint8 images (N, 32, 32, 1), in batches."""
  outs = [jax.device_get(_apply(params, to_input(images_uint8[i:i + batch_size])))
          for i in range(0, len(images_uint8), batch_size)]
  feats = np.concatenate([f for f, _ in outs] or [np.zeros((0, FEATURE_DIM))])
  logits = np.concatenate([l for _, l in outs] or [np.zeros((0, 10))])
  return feats.astype(np.float64), logits.astype(np.float64)
