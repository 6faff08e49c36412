"""Retrains ddpm-jax's Fashion-MNIST classifier (the FD-FMNIST features) and rewrites its
shipped weights, `ddpm_jax/metrics/fmnist_classifier.npz`:

  python tools/train_fmnist_classifier.py

Training is deterministic (fixed seed, fixed data order, CPU float32), so that every user
measures with the same network; it prints the test accuracy (87.7 % for the shipped weights).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from ddpm_jax.data import fashion_mnist
from ddpm_jax.data.preprocess import preprocess_images
from ddpm_jax.metrics import fmnist_classifier as fc


def train_classifier(train_images, train_labels, seed: int = 0, epochs: int = 3,
                     batch_size: int = 128, lr: float = 1e-3, progress: bool = True):
  """Trains the classifier deterministically on uint8 (N, 32, 32, 1) images; returns params."""
  model = fc.FashionClassifier()
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, fc.IMAGE_SIZE, fc.IMAGE_SIZE, 1)))
  params = params['params']
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
  bar = tqdm(total=epochs * (n // batch_size), desc='fmnist classifier', disable=not progress)
  for _ in range(epochs):
    order = rng.permutation(n)
    for i in range(n // batch_size):
      idx = order[i * batch_size:(i + 1) * batch_size]
      params, opt_state, loss = step(params, opt_state, fc.to_input(train_images[idx]),
                                     jnp.asarray(train_labels[idx]))
      bar.update(1)
      if i % 50 == 0:
        bar.set_postfix(loss=f'{float(loss):.3f}')
  bar.close()
  return params


def accuracy(params, images_uint8, labels) -> float:
  _, logits = fc.features_and_logits(params, images_uint8)
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def save_params(params, path: str = fc.WEIGHTS_PATH) -> None:
  """Writes `params` as `fc.load_params` reads them (flattened names joined by '/')."""
  flat = traverse_util.flatten_dict(jax.device_get(params))
  np.savez(path, **{'/'.join(k): np.asarray(v) for k, v in flat.items()})


def _load_padded(split: str):
  images, labels = fashion_mnist.load(fashion_mnist.find_dir(), split)
  return preprocess_images(images, fc.IMAGE_SIZE, 1), np.asarray(labels)


def main():
  train_x, train_y = _load_padded('train')
  test_x, test_y = _load_padded('test')
  params = train_classifier(train_x, train_y)
  save_params(params)
  print(f'Wrote {fc.WEIGHTS_PATH}; test accuracy {accuracy(params, test_x, test_y):.4f}')


if __name__ == '__main__':
  main()
