"""A small Fashion-MNIST classifier whose penultimate features measure sample quality offline.

Where the FID Inception weights are not available, ddpm-jax reports **FD-FMNIST**: the Fréchet
distance between the feature statistics of generated and real Fashion-MNIST images in the
128-d penultimate layer of this classifier. It is a separately named metric, comparable only
with itself (never with FID).

The classifier is trained deterministically (fixed seed, fixed data order, CPU float32) by
`train_classifier`; its parameters are shipped in `fmnist_classifier.npz` next to this file so
that every user measures with the same network. `python -m ddpm_jax.metrics.fmnist_classifier`
retrains it and rewrites that file.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from ddpm_jax.data import fashion_mnist
from ddpm_jax.data.preprocess import preprocess_images

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fmnist_classifier.npz')
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


def _to_input(images_uint8) -> jnp.ndarray:
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
        f'`python -m ddpm_jax.metrics.fmnist_classifier`.')
  with np.load(path) as f:
    flat = {tuple(k.split('/')): jnp.asarray(f[k]) for k in f.files}
  return traverse_util.unflatten_dict(flat)


def save_params(params, path: str = WEIGHTS_PATH) -> None:
  flat = traverse_util.flatten_dict(jax.device_get(params))
  np.savez(path, **{'/'.join(k): np.asarray(v) for k, v in flat.items()})


@jax.jit
def _apply(params, x):
  return FashionClassifier().apply({'params': params}, x)


def features_and_logits(params, images_uint8, batch_size: int = 1000):
  """(features (N, 128), logits (N, 10)) of uint8 images (N, 32, 32, 1), in batches."""
  feats, logits = [], []
  for i in range(0, len(images_uint8), batch_size):
    f, l = _apply(params, _to_input(images_uint8[i:i + batch_size]))
    feats.append(np.asarray(f, np.float64))
    logits.append(np.asarray(l, np.float64))
  if not feats:
    return np.zeros((0, FEATURE_DIM)), np.zeros((0, 10))
  return np.concatenate(feats), np.concatenate(logits)


def train_classifier(train_images, train_labels, seed: int = 0, epochs: int = 3,
                     batch_size: int = 128, lr: float = 1e-3, progress: bool = True):
  """Trains the classifier deterministically on uint8 (N, 32, 32, 1) images; returns params."""
  from tqdm.auto import tqdm
  model = FashionClassifier()
  key = jax.random.PRNGKey(seed)
  params = model.init(key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1)))['params']
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      _, logits = model.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  n = len(train_images)
  rng = np.random.default_rng(seed)
  steps = epochs * (n // batch_size)
  bar = tqdm(total=steps, desc='fmnist classifier', disable=not progress)
  for _ in range(epochs):
    order = rng.permutation(n)
    for i in range(n // batch_size):
      idx = order[i * batch_size:(i + 1) * batch_size]
      params, opt_state, loss = step(params, opt_state, _to_input(train_images[idx]),
                                     jnp.asarray(train_labels[idx]))
      bar.update(1)
      if i % 50 == 0:
        bar.set_postfix(loss=f'{float(loss):.3f}')
  bar.close()
  return params


def accuracy(params, images_uint8, labels) -> float:
  _, logits = features_and_logits(params, images_uint8)
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def _load_padded(split: str):
  images, labels = fashion_mnist.load(fashion_mnist.find_dir(), split)
  images = preprocess_images(images, IMAGE_SIZE, 1)
  return images, np.asarray(labels)


def main():
  train_x, train_y = _load_padded('train')
  test_x, test_y = _load_padded('test')
  params = train_classifier(train_x, train_y)
  save_params(params)
  print(f'Wrote {WEIGHTS_PATH}; test accuracy {accuracy(params, test_x, test_y):.4f}')


if __name__ == '__main__':
  main()
