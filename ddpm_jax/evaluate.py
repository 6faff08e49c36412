"""Evaluation: bits/dim of the variational bound and sample quality, during training and as a
separate `--mode=eval` job that follows a training run's checkpoints.

Protocol (printed with every result): bits/dim of the EMA model on `config.eval.split` images,
uint8-quantised; sample metrics from uint8-quantised EMA samples of the sampler in
`config.sample` against reference statistics of `config.eval.reference_split` (the training set
by default, as the paper), cached as `.npz` in the workdir.
Metrics: `bpd` (+ prior, decoder and KL-sum terms), `fid`, `is`, `kid` when the Inception
weights are given (`config.eval.inception_weights`), and `fd_fmnist` — the Fréchet distance in
the features of ddpm-jax's own Fashion-MNIST classifier — on Fashion-MNIST.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time

import jax
import numpy as np

from ddpm_jax import checkpointing, data, generation, sharding, workdir_lock
from ddpm_jax.checkpointing import Checkpointer, CheckpointError, CheckpointMismatchError
from ddpm_jax.errors import ConfigError
from ddpm_jax.experiment import Experiment
from ddpm_jax.metrics import bpd as bpd_lib

CSV_NAME = 'eval_results.csv'
STATE_NAME = 'eval_state.json'
CSV_FIELDS = ('step', 'bpd', 'prior_bpd', 'decoder_bpd', 'kl_terms_bpd', 'bpd_examples',
              'fd_fmnist', 'fid', 'is', 'kid', 'num_samples', 'sampler', 'sample_steps',
              'seconds')


def _sampler_desc(config) -> tuple[str, int]:
  s = config.sample
  return s.sampler, int(s.steps or config.diffusion.num_timesteps)


def load_inception_weights(path: str):
  """The FID Inception variables of `config.eval.inception_weights`; a missing file or one that
  is not those weights is a one-line error naming the key."""
  from ddpm_jax.metrics import inception  # pylint: disable=g-import-not-at-top
  try:
    return inception.load_inception_params(path)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (zip, pickle and layout errors)
    raise ConfigError(f'config.eval.inception_weights={path!r} is not the FID Inception '
                      f'weights: {type(e).__name__}: {e}') from e


def check_inputs(config, bpd_examples: int, num_samples: int):
  """Checks what an evaluation of `bpd_examples` test images and `num_samples` samples reads
  (the evaluation split, the reference split when its statistics are not cached, the Inception
  weights) before any of the hours it may take; returns the Inception variables (or None)."""
  ev = config.eval
  if bpd_examples > 0:
    data.open_source(config.data, ev.split)
  if num_samples <= 0:
    return None
  if config.data.dataset == 'fashion_mnist' or ev.inception_weights:
    data.open_source(config.data, ev.reference_split)
  return load_inception_weights(ev.inception_weights) if ev.inception_weights else None


class Evaluator:
  """Holds the jitted evaluation functions, the evaluation data and the reference statistics."""

  def __init__(self, experiment: Experiment, workdir: str):
    self.experiment = experiment
    self.config = experiment.config
    self.workdir = workdir
    self._bpd_fns = {}
    self._test_images = None
    self._sample_fns = {}
    self._fmnist = None

  def check_inputs(self, bpd_examples: int, num_samples: int) -> None:
    """`check_inputs` for this evaluator's config, keeping the Inception weights it loads."""
    variables = check_inputs(self.config, bpd_examples, num_samples)
    if variables is not None:
      self._inception = variables

  # Bits/dim -----------------------------------------------------------------------------------

  def _bpd_fn(self, batch_size: int):
    if batch_size not in self._bpd_fns:
      exp, cfg = self.experiment, self.config

      def fn(params, x0, key):
        def denoise_fn(x, t):
          return exp.model.apply({'params': params}, x, t, train=False)
        return bpd_lib.bpd_terms(exp.schedule, denoise_fn, x0, key,
                                 mean_type=cfg.diffusion.mean_type,
                                 var_type=cfg.diffusion.var_type,
                                 clip_denoised=cfg.eval.bpd_clip_denoised)

      mesh = exp.mesh
      data = (sharding.batch_sharding(mesh) if batch_size % mesh.size == 0
              else sharding.replicated(mesh))
      repl = sharding.replicated(mesh)
      self._bpd_fns[batch_size] = jax.jit(fn, in_shardings=(repl, data, repl),
                                          out_shardings=data)
    return self._bpd_fns[batch_size]

  def test_images(self, num: int) -> np.ndarray:
    if self._test_images is None or len(self._test_images) < num:
      self._test_images = data.load_split(self.config.data, self.config.eval.split,
                                                     max_examples=num)
    return self._test_images[:num]

  def bits_per_dim(self, params, num_examples: int, progress: bool = True) -> dict:
    """Mean bits/dim (total and per term) over the first `num_examples` evaluation images."""
    from tqdm.auto import tqdm
    images = self.test_images(num_examples)
    bs = min(self.config.eval.bpd_batch_size, len(images))
    fn = self._bpd_fn(bs)
    key = jax.random.PRNGKey(self.config.eval.seed)
    totals, priors, terms = [], [], []
    n_batches = len(images) // bs
    for i in tqdm(range(n_batches), desc='bits/dim', unit='batch',
                  disable=not progress or jax.process_index() != 0):
      x0 = (images[i * bs:(i + 1) * bs].astype(np.float32) / 127.5 - 1.0)
      out = jax.device_get(fn(params, x0, jax.random.fold_in(key, i)))
      totals.append(out['total'])
      priors.append(out['prior'])
      terms.append(out['terms'])
    s = bpd_lib.summarize({'total': np.concatenate(totals), 'prior': np.concatenate(priors),
                           'terms': np.concatenate(terms)})
    s['bpd_examples'] = n_batches * bs
    return s

  # Samples ------------------------------------------------------------------------------------

  def samples(self, params, num: int, progress: bool = True) -> np.ndarray:
    bs = min(self.config.sample.batch_size, num)
    if bs not in self._sample_fns:
      self._sample_fns[bs] = generation.make_sample_fn(self.experiment, bs)
    key = jax.random.PRNGKey(self.config.eval.seed + 1)
    return generation.generate(self._sample_fns[bs], params, key, num, bs, progress=progress)

  def _fmnist_reference(self):
    """(classifier params, mu, sigma) of the reference split, cached in the workdir."""
    if self._fmnist is None:
      from ddpm_jax.metrics import fmnist_classifier as fc
      from ddpm_jax.metrics import image_metrics
      params = fc.load_params()
      ev = self.config.eval
      path = os.path.join(self.workdir, f'fd_fmnist_ref_{ev.reference_split}.npz')
      if os.path.exists(path):
        with np.load(path) as f:
          mu, sigma = f['mu'], f['sigma']
      else:
        data_cfg = self.config.data.copy_and_resolve_references()
        with data_cfg.unlocked():
          data_cfg.image_size, data_cfg.channels = fc.IMAGE_SIZE, 1
        ref = data.load_split(data_cfg, ev.reference_split,
                                        max_examples=ev.reference_examples)
        feats, _ = fc.features_and_logits(params, ref)
        mu, sigma = image_metrics.feature_statistics(feats)
        if jax.process_index() == 0:
          os.makedirs(self.workdir, exist_ok=True)
          np.savez(path, mu=mu, sigma=sigma, num=len(ref))
      self._fmnist = (params, mu, sigma)
    return self._fmnist

  def sample_quality(self, samples_uint8: np.ndarray) -> dict:
    """The sample metrics this machine can compute for these samples."""
    out = {}
    cfg = self.config
    if cfg.data.dataset == 'fashion_mnist' and samples_uint8.shape[1:] == (32, 32, 1):
      from ddpm_jax.metrics import fmnist_classifier as fc
      from ddpm_jax.metrics import image_metrics
      params, mu, sigma = self._fmnist_reference()
      feats, _ = fc.features_and_logits(params, samples_uint8)
      out['fd_fmnist'] = image_metrics.sample_quality(feats, (mu, sigma))['fd']
    if cfg.eval.inception_weights:
      out.update(self._inception_metrics(samples_uint8))
    return out

  def _inception_metrics(self, samples_uint8) -> dict:
    from ddpm_jax.metrics import image_metrics, inception
    ev = self.config.eval
    if not hasattr(self, '_inception'):
      self._inception = load_inception_weights(ev.inception_weights)
    params = self._inception  # {'params', 'batch_stats'}
    path = os.path.join(self.workdir, f'inception_ref_{ev.reference_split}.npz')
    if os.path.exists(path):
      with np.load(path) as f:
        ref_feats = f['features']
    else:
      ref = data.load_split(self.config.data, ev.reference_split,
                                      max_examples=ev.reference_examples)
      ref_feats, _ = inception.extract_features(params, ref, ev.inception_batch_size)
      if jax.process_index() == 0:
        np.savez(path, features=ref_feats)
    feats, logits = inception.extract_features(params, samples_uint8, ev.inception_batch_size)
    q = image_metrics.sample_quality(feats, ref_feats, logits, is_splits=ev.is_splits)
    return {'fid': q['fd'], 'is': q['is'], 'kid': q['kid']}

  # Both ---------------------------------------------------------------------------------------

  def evaluate(self, params, step: int, bpd_examples: int, num_samples: int,
               progress: bool = True) -> dict:
    """Every metric for one set of parameters; returns a CSV-ready row."""
    t0 = time.perf_counter()
    row = {'step': int(step)}
    if bpd_examples > 0:
      res = self.bits_per_dim(params, bpd_examples, progress)
      row.update({k: v for k, v in res.items() if k != 'terms'})
      self.last_bpd_terms = res['terms']
    if num_samples > 0:
      samples = self.samples(params, num_samples, progress)
      row.update(self.sample_quality(samples))
      sampler, steps = _sampler_desc(self.config)
      row.update(num_samples=len(samples), sampler=sampler, sample_steps=steps)
    row['seconds'] = round(time.perf_counter() - t0, 2)
    return row


def protocol(config) -> str:
  """One line stating how the numbers were measured."""
  sampler, steps = _sampler_desc(config)
  ev = config.eval
  return (f'protocol: EMA params; bits/dim on {config.data.dataset}/{ev.split} (uint8 data, '
          f'full T={config.diffusion.num_timesteps} bound, clip={ev.bpd_clip_denoised}); samples: '
          f'{sampler} sampler, {steps} steps, uint8-quantised, reference statistics of the '
          f'{ev.reference_split} split')


def save_bpd_terms(workdir: str, step: int, terms, row: dict) -> tuple[str, str]:
  """The per-term bits/dim of eq. 5 at `step`: `bpd_terms_stepN.npz` (`terms[t]` = L_t for
  t = 0 (the decoder L_0) .. T-1, and the prior L_T) and a plot of L_t against t,
  `bpd_terms_stepN.png`, showing where the bound's bits go."""
  from matplotlib.figure import Figure
  terms = np.asarray(terms, np.float64)
  stem = os.path.join(workdir, f'bpd_terms_step{step:08d}')
  np.savez(stem + '.npz', terms=terms, prior=row.get('prior_bpd', np.nan),
           total=row['bpd'], examples=row.get('bpd_examples', 0))
  fig = Figure(figsize=(7, 4), layout='constrained')
  ax = fig.add_subplot()
  ax.plot(np.arange(len(terms)), terms, linewidth=1.2)
  ax.set_yscale('log')
  ax.set_xlabel('t (0 = decoder L_0)')
  ax.set_ylabel('bits/dim of L_t')
  ax.set_title(f'step {step}: total {row["bpd"]:.4g} bits/dim = prior '
               f'{row.get("prior_bpd", float("nan")):.2g} + decoder '
               f'{row.get("decoder_bpd", float("nan")):.3g} + KL terms '
               f'{row.get("kl_terms_bpd", float("nan")):.4g}', fontsize='small')
  ax.grid(True, which='both', alpha=0.3)
  fig.savefig(stem + '.png', dpi=100)
  return stem + '.npz', stem + '.png'


def append_csv(path: str, row: dict) -> None:
  new = not os.path.exists(path)
  with open(path, 'a', newline='') as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction='ignore')
    if new:
      w.writeheader()
    w.writerow(row)


def _load_state(path: str) -> dict:
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {'done': []}


def _save_state(path: str, state: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(state, f)
  os.replace(tmp, path)


def _record(workdir: str, row: dict, evaluator: Evaluator) -> None:
  """Process 0: appends `row` to eval_results.csv, saves the per-term bits/dim, prints it."""
  append_csv(os.path.join(workdir, CSV_NAME), row)
  if 'bpd' in row:
    save_bpd_terms(workdir, row['step'], evaluator.last_bpd_terms, row)
  print('eval ' + ' '.join(f'{k}={v:.5g}' if isinstance(v, float) else f'{k}={v}'
                           for k, v in row.items()), flush=True)


def eval_job(config, workdir: str, experiment: Experiment | None = None,
             progress: bool = True, sleep=time.sleep, init_from: str | None = None) -> list[dict]:
  """`--mode=eval`: evaluates every checkpoint of `workdir` once, newest last, then waits for
  new ones until the final step (`config.train.num_steps`) is done or no checkpoint arrived for
  `config.eval.timeout_seconds`. Finished steps are recorded in `eval_state.json`, so a killed
  job resumes where it stopped; results are appended to `eval_results.csv`.

  With `init_from` (a diffusers model, see `ddpm_jax.interop.diffusers`) and no checkpoint in
  the workdir, that model is evaluated once instead (as step 0) and the job ends."""
  # A data-parallel mesh: evaluation replicates the parameters whatever mesh trained them.
  experiment = experiment or Experiment.from_config(config, mesh=sharding.make_mesh())
  ev = config.eval
  evaluator = Evaluator(experiment, workdir)
  evaluator.check_inputs(ev.bpd_num_examples, ev.num_samples)
  lock = workdir_lock.acquire_for_run(workdir, workdir_lock.EVAL, what='evaluation')
  try:
    return _follow_checkpoints(config, workdir, experiment, evaluator, progress, sleep,
                               init_from)
  finally:
    if lock is not None:
      lock.release()


def _follow_checkpoints(config, workdir, experiment, evaluator, progress, sleep,
                        init_from) -> list[dict]:
  """`eval_job` once its inputs are checked and its lock taken."""
  ev = config.eval
  state_path = os.path.join(workdir, STATE_NAME)
  done = set(_load_state(state_path)['done'])
  rows = []
  is_main = jax.process_index() == 0
  if is_main:
    print(protocol(config), flush=True)
  if init_from and not checkpointing.has_checkpoint(workdir):
    from ddpm_jax.interop import diffusers as hf_interop  # pylint: disable=g-import-not-at-top
    params, folder = hf_interop.load_for_experiment(init_from, experiment)
    if is_main:
      print(f'No checkpoint in {workdir}: evaluating --init_from={init_from} '
            f'({folder.unet_dir}) as step 0.', flush=True)
    row = evaluator.evaluate(params, 0, ev.bpd_num_examples, ev.num_samples, progress)
    if is_main:
      os.makedirs(workdir, exist_ok=True)
      _record(workdir, row, evaluator)
    return [row]
  last_new = time.monotonic()
  while True:
    # Read-only: never clean up (or race with) the trainer's saves in flight.
    checkpointer = Checkpointer(workdir, max_to_keep=None, async_save=False, read_only=True,
                                config=config)
    pending = [s for s in checkpointer.all_steps() if s not in done]
    for step in pending:
      try:
        state = checkpointer.restore(experiment.abstract_state(), step)
      except CheckpointMismatchError:
        raise  # The config is wrong for every checkpoint: skipping them would hide it.
      except CheckpointError as e:  # Deleted by the trainer's max_to_keep, or corrupt.
        logging.warning('Skipping checkpoint %d: %s', step, e)
        done.add(step)
        continue
      row = evaluator.evaluate(state.ema_params, step, ev.bpd_num_examples, ev.num_samples,
                               progress)
      rows.append(row)
      done.add(step)
      if is_main:
        _record(workdir, row, evaluator)
        _save_state(state_path, {'done': sorted(done)})
      last_new = time.monotonic()
    checkpointer.close()
    if config.train.num_steps in done:
      break
    if time.monotonic() - last_new > ev.timeout_seconds:
      logging.warning('No new checkpoint in %s for %d s; stopping.', workdir, ev.timeout_seconds)
      break
    sleep(ev.poll_seconds)
  return rows
