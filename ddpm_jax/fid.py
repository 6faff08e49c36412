"""Command line: sample quality of a set of images against a reference.

  python -m ddpm_jax.fid SAMPLES REFERENCE --inception_weights=pt_inception-2015-12-05-6726825d.pth
      [--save_stats=OUT.npz] [--features=inception|fmnist]

SAMPLES: an `.npz` whose `arr_0` holds uint8 (N, H, W, C) images (what `--mode=sample` writes,
the improved-diffusion / ADM evaluator's layout), a folder of images, or a dataset and split
`NAME:SPLIT` at `--image_size` (real data against real data: the floor a model's samples can
reach, e.g. `fashion_mnist:test fashion_mnist:train --features=fmnist --num_samples=1000`).
`--num_samples=N` keeps the first N images of SAMPLES (all by default).
REFERENCE: an `.npz` of images (`arr_0`), a statistics file (`mu`, `sigma`, as pytorch-fid's
`--save-stats` and `--save_stats` here write them), a folder of images, or a dataset and split
`NAME:SPLIT` (e.g. `cifar10:train`, read as training reads it, at the samples' size;
`--data_dir` as `config.data.data_dir`).

Prints FID, the Inception Score of the samples and KID (when the reference is images, not only
statistics), then the protocol line. `--features=fmnist` measures FD-FMNIST instead, the
Fréchet distance in ddpm-jax's Fashion-MNIST classifier's features (32x32 grey images; no
Inception weights needed; comparable only with itself). `--save_stats=OUT.npz` writes the
reference's statistics in pytorch-fid's format, to pass as REFERENCE next time.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from configs import default
from ddpm_jax import cli, data, runtime
from ddpm_jax.errors import InputError
from ddpm_jax.evaluators import common, fd_fmnist, inception
from ddpm_jax.metrics import fid_is_kid

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined only when it runs (the library functions import
  without them, next to other command lines' flags)."""
  flags.DEFINE_string('inception_weights', '', "pytorch-fid's "
                      'pt_inception-2015-12-05-6726825d.pth (read without torch) or an .npz from '
                      'tools/convert_inception_weights.py.')
  flags.DEFINE_enum('features', 'inception', ['inception', 'fmnist'],
                    'inception: FID / IS / KID; fmnist: FD-FMNIST (ddpm-jax\'s Fashion-MNIST '
                    'classifier, 32x32 grey images).')
  flags.DEFINE_string('save_stats', '', 'Write the reference statistics (mu, sigma) here.')
  flags.DEFINE_string('data_dir', '', 'Where a dataset REFERENCE is (config.data.data_dir).')
  flags.DEFINE_integer('reference_examples', 50_000,
                       'Images of a dataset or folder REFERENCE to use.')
  flags.DEFINE_integer('num_samples', 0, 'Use the first N images of SAMPLES (0: all).')
  flags.DEFINE_integer('image_size', 32, 'Side of the images of a dataset SAMPLES (NAME:SPLIT).')
  flags.DEFINE_integer('batch_size', 100, 'Images per Inception call.')
  flags.DEFINE_integer('is_splits', 10, 'Inception Score splits (10 as the original code).')


def _npz(path: str) -> dict:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files if k in ('arr_0', 'mu', 'sigma')}
  except Exception as e:  # Not an npz, truncated, pickled objects: report them all alike.
    raise InputError(f'Cannot read {path} as an .npz: {e}') from None


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise InputError(f'{what} must be uint8 images (N, H, W, 1 or 3); got {images.dtype} '
                     f'{images.shape} (quantise samples with ddpm_jax.image_files.to_uint8).')
  if len(images) < 2:
    raise InputError(f'{what} has {len(images)} images; statistics need at least 2.')
  return images


def load_input(spec: str, what: str, channels: int, size: int | None, data_dir: str = '',
               max_examples: int = 10**9, statistics: bool = False):
  """SAMPLES or REFERENCE (`what`) as (uint8 images (N, H, W, C), or with `statistics` an
  `(mu, sigma)` pair, and a description): an `.npz`, or a folder of images (every image under
  it; at `size`, default its first image's side) or a dataset split `NAME:SPLIT` at `size`, both
  read as training reads them."""
  if os.path.isfile(spec):
    arrays = _npz(spec)
    if 'arr_0' in arrays:  # Images win over statistics: ours are computed with our network.
      return _check_images(arrays['arr_0'], spec), f'{spec} (arr_0)'
    if statistics and 'mu' in arrays and 'sigma' in arrays:
      return (arrays['mu'], arrays['sigma']), f'statistics {spec}'
    raise InputError(f'{spec} holds no images (arr_0)'
                     + (' nor statistics (mu, sigma).' if statistics else '.'))
  if os.path.isdir(spec):  # The split named after the folder in the folder dataset above it.
    dataset, (data_dir, split) = 'folder', os.path.split(os.path.abspath(spec))
  elif ':' in spec or what == 'REFERENCE':  # A REFERENCE NAME alone is its train split.
    dataset, _, split = spec.partition(':')
  else:
    raise InputError(f'{what} {spec} is neither an .npz file, a folder of images nor a '
                     'dataset NAME:SPLIT.')
  cfg = default.get_config().data
  try:
    if size is None:
      size = min(data.FolderSource(spec, channels)[0][0].shape[:2])
    cfg.update(dataset=dataset, data_dir=data_dir, image_size=size, channels=channels)
    images = data.load_split(cfg, split or 'train', max_examples=max_examples)
  except (data.DatasetError, ValueError) as e:
    where = '' if dataset == 'folder' else ' is not a file or folder, and as a dataset NAME:SPLIT'
    raise InputError(f'{what} {spec}{where}: ' + ' '.join(str(e).split())) from None
  desc = f'folder {spec}' if dataset == 'folder' else f'{dataset}/{split or "train"}'
  return _check_images(images, spec), f'{desc} ({len(images)} images)'


def evaluate(samples: str, reference: str, features: str = 'inception',
             inception_weights: str = '', save_stats: str = '', data_dir: str = '',
             reference_examples: int = 50_000, batch_size: int = 100,
             is_splits: int = 10, num_samples: int = 0,
             image_size: int = 32) -> tuple[dict, str]:
  """The metrics of SAMPLES against REFERENCE (see the module docstring) and the protocol
  line. Every input is checked before features are computed."""
  net = (fd_fmnist.feature_net() if features == 'fmnist' else
         inception.feature_net(inception_weights, batch_size, '--inception_weights', progress=True))
  size = None if os.path.isdir(samples) else image_size  # A folder: its images' own side.
  images, sample_desc = load_input(samples, 'SAMPLES', net.channels, size, data_dir,
                                   num_samples or 10**9)
  if len(images) < num_samples:
    raise InputError(f'SAMPLES {samples} holds {len(images)} images, fewer than '
                     f'--num_samples={num_samples}.')
  if 0 < num_samples < len(images):
    images, sample_desc = images[:num_samples], f'{sample_desc}, the first {num_samples}'
  if net.image_size and images.shape[1:] != (net.image_size, net.image_size, net.channels):
    raise InputError(f'--features={features} takes {net.image_size}x{net.image_size}x'
                     f'{net.channels} images, got {images.shape[1:]}.')
  ref, ref_desc = load_input(reference, 'REFERENCE', net.channels, images.shape[1], data_dir,
                             reference_examples, statistics=True)
  if isinstance(ref, tuple) and np.shape(ref[0]) != (net.dim,):
    raise InputError(f'{reference} holds {np.shape(ref[0])[0]}-d statistics; {net.description} '
                     f'has {net.dim}-d features.')
  feats, logits = net.extract(images)
  ref_feats = ref if isinstance(ref, tuple) else net.extract(ref)[0]
  result = common.quality(net, feats, logits, ref_feats, is_splits)
  if save_stats:
    mu, sigma = ref if isinstance(ref, tuple) else fid_is_kid.feature_statistics(ref_feats)
    os.makedirs(os.path.dirname(os.path.abspath(save_stats)), exist_ok=True)
    np.savez(save_stats, mu=mu, sigma=sigma)
  result.update(num_samples=len(images),
                num_reference=None if isinstance(ref, tuple) else len(ref))
  protocol = (f'protocol: {net.description}; samples: {len(images)} uint8 images from '
              f'{sample_desc}; reference: {ref_desc}'
              + (f'; IS over {min(is_splits, len(images))} splits of the samples'
                 if 'is' in result else '')
              + ('; KID: cubic polynomial kernel, 100 subsets of '
                 f'{min(1000, len(images), len(ref_feats))}' if 'kid' in result else '')
              + ('' if len(images) >= 50_000 else
                 '; fewer than the 50,000 samples of published FIDs (FID is biased upwards)'))
  return result, protocol


def _format(result: dict) -> str:
  parts = []
  for key in ('fid', 'fd_fmnist', 'is', 'kid'):
    if key in result:
      std = result.get(f'{key}_std')
      parts.append(f'{key.upper().replace("_FMNIST", "-FMNIST")} {result[key]:.4g}'
                   + (f' ± {std:.2g}' if std is not None else ''))
  return '  '.join(parts)


def main(argv):
  if len(argv) != 3:
    raise app.UsageError('Usage: python -m ddpm_jax.fid SAMPLES REFERENCE '
                         '--inception_weights=FILE [--save_stats=OUT.npz]')
  runtime.setup('inference')
  result, protocol = evaluate(argv[1], argv[2], FLAGS.features, FLAGS.inception_weights,
                              FLAGS.save_stats, FLAGS.data_dir, FLAGS.reference_examples,
                              FLAGS.batch_size, FLAGS.is_splits, FLAGS.num_samples,
                              FLAGS.image_size)
  print(_format(result))
  print(protocol)
  if FLAGS.save_stats:
    print(f'Reference statistics: {FLAGS.save_stats} (mu, sigma; pytorch-fid\'s format)')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
