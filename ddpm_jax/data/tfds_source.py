"""A prepared tfds dataset read with `tfds.data_source` (ArrayRecord, random access, no
TensorFlow), and the message that says how to prepare one that is missing.

tensorflow-datasets is imported when a tfds dataset is opened: reading needs it, the other
datasets do not.
"""

from __future__ import annotations

import os

import numpy as np

from ddpm_jax.data.preprocess import as_hwc
from ddpm_jax.errors import DatasetError

# Extra `pip install`s that `download_and_prepare` needs, besides TensorFlow.
_PREPARE_EXTRAS = {'lsun': ' tensorflow-io'}


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DatasetError(f'tfds datasets need tensorflow-datasets: pip install '
                       f'tensorflow-datasets array_record ({e}).') from None
  return tfds


def _default_dir() -> str:
  """TFDS' default data_dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
  return str(_tfds().core.constants.DATA_DIR)


def prepare_message(name: str, tfds_name: str, split: str, data_dir: str,
                    err: Exception) -> str:
  """Why `tfds_name` could not be opened, and the exact commands that prepare it."""
  tfds = _tfds()
  shown_dir = data_dir or _default_dir()
  prepared, manual, where, builder_error = False, False, shown_dir, None
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir or None)
    prepared = builder.is_prepared()
    manual = bool(getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
    where = str(builder.data_dir)
  except Exception as e:  # pylint: disable=broad-except
    builder_error = e
  extras = _PREPARE_EXTRAS.get(tfds_name.split('/')[0], '')
  dir_arg = f", data_dir='{shown_dir}'" if data_dir else ''
  prepare = (f'  pip install tensorflow-cpu{extras}\n'
             f'  python -c "import tensorflow_datasets as tfds; tfds.builder(\'{tfds_name}\''
             f'{dir_arg}).download_and_prepare(file_format=\'array_record\')"\n')
  if prepared:
    return (f"Dataset {name!r} (TFDS '{tfds_name}') is prepared at '{where}' but split "
            f'{split!r} could not be opened: {type(err).__name__}: {str(err).strip()[:500]}\n'
            'Random access needs the ArrayRecord format; if it was prepared as TFRecord or is '
            f'corrupt, prepare it again into a fresh data_dir:\n{prepare}')
  msg = (f"Dataset {name!r} (TFDS '{tfds_name}', split {split!r}) is not prepared under "
         f"data_dir '{shown_dir}'. ddpm-jax reads TFDS datasets in the ArrayRecord format "
         'without TensorFlow, but preparing one needs TensorFlow. Prepare it once with:\n')
  if manual:
    msg += (f"  # '{tfds_name}' needs a manual download first: follow "
            f"https://www.tensorflow.org/datasets/catalog/{tfds_name.split('/')[0]} and put "
            f"the files in '{os.path.join(shown_dir, 'downloads', 'manual')}'.\n")
  msg += prepare
  if data_dir:
    msg += f'then run with --config.data.data_dir={shown_dir}.'
  else:
    msg += ('then run again (this is TFDS\' default data_dir; pass '
            '--config.data.data_dir=DIR to use another).')
  if builder_error is not None:
    msg += f' (TFDS: {type(builder_error).__name__}: {str(builder_error).strip()[:300]})'
  return msg


class TfdsSource:
  """`source[i] -> (uint8 (H, W, C) image, int label or None)` of a prepared tfds split.
  `classes`: the label names, or None for a dataset without labels (celeb_a_hq, lsun)."""

  def __init__(self, name: str, tfds_name: str, split: str, data_dir: str = ''):
    tfds = _tfds()
    self.tfds_name, self.split, self.data_dir = tfds_name, split, data_dir
    try:
      self._ds = tfds.data_source(tfds_name, split=split, data_dir=data_dir or None,
                                  download=False)
      self._len = len(self._ds)
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(prepare_message(name, tfds_name, split, data_dir, e)) from None
    features = self._ds.dataset_info.features
    names = getattr(features['label'], 'names', None) if 'label' in features else None
    self.classes = tuple(names) if names else None

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> tuple[np.ndarray, int | None]:
    try:
      example = self._ds[int(i)]
      image = np.asarray(example['image'])
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(
          f"Could not read example {i} of TFDS '{self.tfds_name}' split {self.split!r} "
          f"(data_dir '{self.data_dir or _default_dir()}'): {type(e).__name__}: {e}. "
          'The prepared files may be corrupt; prepare the dataset again.') from None
    label = example.get('label') if isinstance(example, dict) else None
    return as_hwc(image), (None if label is None else int(label))
