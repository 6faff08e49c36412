"""Datasets (`sources`: `tfds_source`, `folder`, `fashion_mnist`), their preprocessing
(`preprocess`) and the deterministic, resumable training batches on grain (`pipeline`)."""

# pylint: disable=unused-import  (the package's interface)
from ddpm_jax.data.folder import IMAGE_EXTENSIONS, FolderSource, list_images
from ddpm_jax.data.pipeline import TrainIterator, check_labels, create_train_iterator, load_split
from ddpm_jax.data.preprocess import preprocess_image, to_float
from ddpm_jax.data.sources import ArraySource, open_source, resolve_dataset
from ddpm_jax.errors import DatasetError
