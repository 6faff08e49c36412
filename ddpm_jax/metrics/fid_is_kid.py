"""FID, Inception Score and KID from a network's features and logits (float64 NumPy / SciPy
on the host, as the reference implementations), and `extract_features`, which runs the
network (normally `InceptionV3.apply`) jitted over uint8 images."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import jax
import numpy as np
import scipy.linalg
import scipy.special
from tqdm.auto import tqdm


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (d,) and unbiased covariance (d, d) of features (N, d), in float64."""
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'feature_statistics needs (N >= 2, d) features, got shape {f.shape}.')
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): FID (Heusel et al. 2017), the
  squared distance d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))
  as a Python float.

  As in pytorch-fid: if the square root of the product is not finite (here also: if SciPy warns
  that the product is singular, as with fewer samples than feature dimensions), it is recomputed
  with `eps` added to the diagonals of both covariances; a complex result whose diagonal has an
  imaginary part above 1e-3 is an error, smaller imaginary parts are dropped.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / '
                     f'{sigma2.shape}.')
  diff = mu1 - mu2
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
  if singular or not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
      covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'sqrtm has an imaginary component of {np.max(np.abs(covmean.imag))}.')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def inception_score(logits_or_probs, splits: int = 10,
                    from_logits: bool = True) -> tuple[float, float]:
  """Inception Score (Salimans et al. 2016): (mean, std with ddof 0) over `splits` of
  exp(mean_x KL(p(y|x) || p(y))).

  `logits_or_probs` (N, K) are logits (softmax taken here, in float64) or, with
  `from_logits=False`, class probabilities. The splits are consecutive rows
  i*N//splits .. (i+1)*N//splits, each with its own marginal p(y) (its mean prediction); 10 is
  the original code's convention, 1 the single-split score of TF-GAN / the DDPM paper's code.
  """
  x = np.asarray(logits_or_probs, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] < splits or splits < 1:
    raise ValueError(f'inception_score needs (N >= splits, K) inputs, got {x.shape} and '
                     f'splits={splits}.')
  if from_logits:
    log_p = scipy.special.log_softmax(x, axis=1)
    p = np.exp(log_p)
  else:
    p, log_p = x, np.log(np.where(x > 0, x, 1.0))  # p log p -> 0 where p = 0.
  scores = []
  n = x.shape[0]
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    p_split, lp = p[lo:hi], log_p[lo:hi]
    marginal = np.mean(p_split, axis=0)
    # Classes no row predicts (marginal 0) have p = 0 in every row and add nothing.
    log_marginal = np.log(marginal, out=np.zeros_like(marginal), where=marginal > 0)
    kl = np.sum(p_split * (lp - log_marginal), axis=1)
    scores.append(math.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x.y / d + 1)^3 for rows of x (n, d) and y (m, d) -> (n, m)."""
  k = x @ y.T / x.shape[1] + 1.0
  return k * k * k  # Much faster than `k ** 3` (NumPy's general power).


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 (a U-statistic) between equal-size samples x, y (m, d), polynomial kernel.

  (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 mean_{i, j} k(x_i, y_j).
  """
  m = x.shape[0]
  if y.shape[0] != m or m < 2:
    raise ValueError(f'mmd2_unbiased needs two samples of the same size >= 2, got {m}, '
                     f'{y.shape[0]}.')
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  sum_xx = k_xx.sum() - np.trace(k_xx)
  sum_yy = k_yy.sum() - np.trace(k_yy)
  return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.mean())


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID (Binkowski et al. 2018): (mean, std) of the unbiased MMD^2 (cubic polynomial kernel)
  over random subsets.

  For each of `num_subsets` rounds, `m = min(subset_size, N1, N2)` rows are drawn without
  replacement from each of the (N1, d) and (N2, d) feature sets, independently per round (as
  Binkowski et al.'s code and torch-fidelity, whose defaults 100 and 1000 these are; `seed`
  seeds NumPy's `default_rng`), and `mmd2_unbiased` is evaluated on them. The mean is an
  unbiased estimate of MMD^2: it can be negative when the distributions are equal.
  """
  f1 = np.asarray(features1, dtype=np.float64)
  f2 = np.asarray(features2, dtype=np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f'feature shapes {f1.shape} and {f2.shape} do not match.')
  m = min(subset_size, f1.shape[0], f2.shape[0])
  rng = np.random.default_rng(seed)
  estimates = [
      mmd2_unbiased(f1[rng.choice(f1.shape[0], m, replace=False)],
                    f2[rng.choice(f2.shape[0], m, replace=False)]) for _ in range(num_subsets)
  ]
  return float(np.mean(estimates)), float(np.std(estimates))


def sample_quality(features, reference, logits=None, is_splits: int = 10,
                   kid_subset_size: int = 1000) -> dict:
  """The sample metrics that samples' `features` (N, d) and a `reference` ((M, d) features
  or their statistics `(mu, sigma)`) define: {'fd': Fréchet distance}, plus 'is' / 'is_std'
  (over at most N splits) with the samples' `logits` (N, K), and 'kid' / 'kid_std' when the
  reference is features (KID needs them, not only their statistics).
  """
  statistics_only = isinstance(reference, tuple)
  ref_stats = reference if statistics_only else feature_statistics(reference)
  out = {'fd': frechet_distance(*feature_statistics(features), *ref_stats)}
  if logits is not None:
    out['is'], out['is_std'] = inception_score(logits, splits=min(is_splits, len(logits)))
  if not statistics_only:
    out['kid'], out['kid_std'] = kernel_inception_distance(features, reference,
                                                           subset_size=kid_subset_size)
  return out


def extract_features(apply_fn: Callable[..., Any], params, images_uint8,
                     batch_size: int = 100, progress: bool = False) -> Any:
  """Runs `apply_fn(params, batch)` jitted over uint8 NHWC images, in fixed-size batches.

  Grey images (C = 1) are repeated to 3 channels. The last batch is padded to `batch_size` (so
  there is one compilation) and the padding's outputs dropped. Results are fetched to the host
  one batch late, so the device never waits for the transfer.

  `apply_fn` (e.g. `InceptionV3().apply`) returns an array or a pytree of arrays with a leading
  batch axis; the result is that pytree with NumPy arrays of leading size N. `params` are put
  on the device once.
  """
  images = np.asarray(images_uint8)
  if images.dtype != np.uint8:
    raise TypeError(f'extract_features expects uint8 images (quantise samples first, e.g. with '
                    f'ddpm_jax.image_files.to_uint8), got {images.dtype}.')
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected (N, H, W, 1 or 3) images, got shape {images.shape}.')
  n = images.shape[0]
  if n == 0:
    raise ValueError('extract_features got no images.')
  fn = jax.jit(apply_fn)
  params = jax.device_put(params)
  done, pending = [], None
  for start in tqdm(range(0, n, batch_size), desc='features', unit='batch', disable=not progress):
    batch = images[start:start + batch_size]
    if batch.shape[-1] == 1:
      batch = np.repeat(batch, 3, axis=-1)
    if batch.shape[0] < batch_size:
      batch = np.pad(batch, [(0, batch_size - batch.shape[0])] + [(0, 0)] * 3)
    out = fn(params, batch)
    if pending is not None:
      done.append(jax.device_get(pending))
    pending = out
  done.append(jax.device_get(pending))
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *done)
