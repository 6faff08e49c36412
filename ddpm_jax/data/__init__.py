"""Datasets, preprocessing and the deterministic, resumable training batches.

* `open_source(config.data, split)`: a random-access source, `source[i] -> (uint8 (H, W, C)
  image, label or None)`, with `source.classes` (sources: `tfds_source`, `folder`,
  `fashion_mnist`; chosen in `sources`).
* `create_train_iterator(...)`: the training batches on grain, a pure function of (seed, step)
  whatever the number of processes (`pipeline`).
* `load_split(config.data, split, max_examples)`: the first images of a split, preprocessed.
* `preprocess_image`, `preprocess_images`, `to_float`: what training does to an image
  (`preprocess`).
"""

from ddpm_jax.data.folder import IMAGE_EXTENSIONS, FolderSource, list_images
from ddpm_jax.data.pipeline import TrainIterator, check_labels, create_train_iterator, load_split
from ddpm_jax.data.preprocess import preprocess_image, preprocess_images, to_float
from ddpm_jax.data.sources import DATASETS, ArraySource, check_dataset_name, open_source
from ddpm_jax.errors import DatasetError

__all__ = [
    'DATASETS',
    'IMAGE_EXTENSIONS',
    'ArraySource',
    'DatasetError',
    'FolderSource',
    'TrainIterator',
    'check_dataset_name',
    'check_labels',
    'create_train_iterator',
    'list_images',
    'load_split',
    'open_source',
    'preprocess_image',
    'preprocess_images',
    'to_float',
]
