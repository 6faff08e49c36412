"""The evaluators a config chooses (`config.evals`), run together on one set of parameters.

Training-time evaluation (`ddpm_jax.train`, also a sweep member's final evaluation) and the
`--mode=eval` job (`ddpm_jax.evaluate`) both build a `Suite` and call `evaluate`, which returns
the row that `results.record` writes.
"""

from __future__ import annotations

import time

import jax

from ddpm_jax import generation
from ddpm_jax.evaluators.bits_per_dim import BitsPerDim
from ddpm_jax.evaluators.common import SampleQuality
from ddpm_jax.evaluators.fd_fmnist import FdFmnist
from ddpm_jax.evaluators.inception import Inception
from ddpm_jax.experiment import Experiment

TYPES = {'bpd': BitsPerDim, 'inception': Inception, 'fd_fmnist': FdFmnist}


def reached(every: int, step: int, n: int = 1) -> bool:
  """Whether the last `n` steps, up to `step`, reached a multiple of `every` (never for 0)."""
  return bool(every) and step // every > (step - n) // every


class Suite:
  """The evaluators of `config.evals` that apply to this config and have a size > 0, at their
  training-time size (`job=False`: training and a sweep's final evaluation; with `scheduled`,
  only those with `every` > 0) or their `--mode=eval` size (`job=True`).

  The evaluators read what they share from it: the experiment (model, schedule, mesh), the
  workdir (reference caches), whether to show progress bars, and `samples`."""

  def __init__(self, config, experiment: Experiment, workdir: str, job: bool,
               scheduled: bool = False, progress: bool = True):
    self.config, self.experiment, self.workdir = config, experiment, workdir
    self.progress = progress
    self._sample_fns, self._sampled = {}, None  # _sampled: (params, images) of `samples`.
    self.evaluators = []
    for name, spec in config.evals.items():
      cls = TYPES[spec.type]
      num = spec[cls.sizes[job]]
      if num > 0 and cls.applies(spec, config) and (spec.every > 0 or not scheduled):
        self.evaluators.append(cls(name, spec, self, num))

  def samples(self, params, num: int):
    """The first `num` uint8 EMA samples of `params` with `config.sample`'s sampler, seeded by
    `config.eval.seed + 1`: generated once per evaluation, unless a larger set already was,
    and shared by the sample evaluators."""
    if self._sampled is None or self._sampled[0] is not params or len(self._sampled[1]) < num:
      bs = min(self.config.sample.batch_size, num)
      if bs not in self._sample_fns:
        self._sample_fns[bs] = generation.make_sample_fn(self.experiment, bs)
      key = jax.random.PRNGKey(self.config.eval.seed + 1)
      self._sampled = params, generation.generate(self._sample_fns[bs], params, key, num, bs,
                                                  progress=self.progress)
    return self._sampled[1][:num]

  def check_inputs(self) -> None:
    """Opens every split and loads every network the evaluators read, before any of the hours
    an evaluation may take."""
    for e in self.evaluators:
      e.check_inputs()

  def due(self, step: int, n: int = 1, final: bool = False) -> list:
    """The evaluators whose `every` the last `n` steps, up to `step`, reached (all at the
    `final` step)."""
    return [e for e in self.evaluators if final or reached(e.spec.every, step, n)]

  def evaluate(self, params, step: int, evaluators=None) -> dict:
    """Every metric of `evaluators` (default: all) for `params`: a row for `results.record`.
    The sample metrics share one set of samples, generated once."""
    t0 = time.perf_counter()
    evaluators = self.evaluators if evaluators is None else evaluators
    row = {'step': int(step)}
    num_samples = max((e.num for e in evaluators if isinstance(e, SampleQuality)), default=0)
    if num_samples:
      self.samples(params, num_samples)
      s = self.config.sample
      row.update(num_samples=num_samples, sampler=s.sampler,
                 sample_steps=int(s.steps or self.config.diffusion.num_timesteps))
    for e in evaluators:
      row.update(e.run(params))
    self._sampled = None  # Their memory, and the reference to their parameters.
    row['seconds'] = round(time.perf_counter() - t0, 2)
    return row

  def protocol(self) -> str:
    """One line stating how the numbers are measured."""
    return '; '.join(['protocol: EMA params'] + [e.describe() for e in self.evaluators])
