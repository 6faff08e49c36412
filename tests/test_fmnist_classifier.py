"""The shipped Fashion-MNIST classifier behind FD-FMNIST: accuracy and deterministic training."""

import os
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, make_tiny_config
from ddpm_jax import data
from ddpm_jax.data import fashion_mnist
from ddpm_jax.metrics import fmnist_classifier as fc

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import train_fmnist_classifier as trainer  # pylint: disable=wrong-import-position


def _split(name, n):
  c = make_tiny_config(image_size=32)
  images = data.load_split(c.data, name, max_examples=n)
  _, labels = fashion_mnist.load(fashion_mnist.find_dir(), name)
  return images, np.asarray(labels)[:n]


def test_shipped_weights_classify_the_test_set():
  params = fc.load_params()
  images, labels = _split('test', 10_000)
  assert trainer.accuracy(params, images, labels) == pytest.approx(0.8771, abs=0.002)
  feats, logits = fc.features_and_logits(params, images[:10])
  assert feats.shape == (10, fc.FEATURE_DIM) and logits.shape == (10, 10)


def test_training_is_deterministic():
  images, labels = _split('train', 512)
  a = trainer.train_classifier(images, labels, epochs=1, batch_size=128, progress=False)
  b = trainer.train_classifier(images, labels, epochs=1, batch_size=128, progress=False)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_wrong_shape_is_a_clear_error():
  with pytest.raises(ValueError, match=r'\(N, 32, 32, 1\) uint8'):
    fc.features_and_logits(fc.load_params(), np.zeros((2, 28, 28, 1), np.uint8))
