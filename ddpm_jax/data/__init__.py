"""Datasets, preprocessing and the deterministic, resumable training batches.

* `open_source(config.data, split)`: a random-access source, `source[i] -> (uint8 (H, W, C)
  image, label or None)`, with `source.classes` (sources: `tfds_source`, `folder`,
  `fashion_mnist`; chosen in `sources`).
* `create_train_iterator(...)`: the training batches on grain, a pure function of (seed, step)
  whatever the number of processes (`pipeline`).
* `load_split(config.data, split, max_examples)`: the first images of a split, preprocessed.
* `preprocess_image`, `to_float`: what training does to an image (`preprocess`).
"""

# pylint: disable=unused-import  (the package's interface)
from ddpm_jax.data.folder import IMAGE_EXTENSIONS, FolderSource, list_images
from ddpm_jax.data.pipeline import TrainIterator, check_labels, create_train_iterator, load_split
from ddpm_jax.data.preprocess import preprocess_image, to_float
from ddpm_jax.data.sources import ArraySource, open_source, resolve_dataset
from ddpm_jax.errors import DatasetError
