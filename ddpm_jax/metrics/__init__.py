"""Sample-quality metrics.

* `inception`: `InceptionV3` (the FID Inception-v3 in Flax, NHWC) and `load_inception_params`
  (pytorch-fid's .pth, read without torch, or a converted .npz).
* `image_metrics`: `extract_features`, `feature_statistics`, `frechet_distance`,
  `inception_score`, `kernel_inception_distance` (float64 NumPy / SciPy).
* `torch_pickle`: reading torch `state_dict` files without torch.

The names below are re-exported lazily, so that importing one submodule does not import the
others.
"""

import importlib

_EXPORTS = {
    'extract_features': 'image_metrics',
    'feature_statistics': 'image_metrics',
    'frechet_distance': 'image_metrics',
    'inception_score': 'image_metrics',
    'kernel_inception_distance': 'image_metrics',
    'FID_WEIGHTS_URL': 'inception',
    'InceptionV3': 'inception',
    'load_inception_params': 'inception',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
