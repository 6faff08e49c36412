"""Scalars to TensorBoard event files and to a JSON-lines file in the workdir (process 0 only),
and the reader of that file (imports no JAX: the sweep report and the run figures read it)."""

from __future__ import annotations

import json
import os

METRICS_JSONL = 'metrics.jsonl'


class MetricWriter:
  """Writes scalars to `workdir/tensorboard/` (TensorBoard) and `workdir/metrics.jsonl` on
  process 0; on the other processes it writes nothing."""

  def __init__(self, workdir: str):
    import jax  # pylint: disable=g-import-not-at-top  (the readers below need no JAX)
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # Imported lazily: only process 0 writes.
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, METRICS_JSONL), 'a')

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._jsonl.write(json.dumps({'step': int(step), **{k: float(v) for k, v in
                                                          scalars.items()}}) + '\n')
    self._jsonl.flush()

  def write_image(self, step: int, name: str, image_uint8) -> None:
    if self.enabled:
      self._tb.add_image(name, image_uint8, int(step), dataformats='HWC')

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


def read_metrics(path: str) -> list[dict]:
  """The records of a `metrics.jsonl` in file order; [] when absent. Unparsable lines (the last
  line of a running job may be half written) are skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and 'step' in record:
        records.append(record)
  return records


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
  """(step, value) of `key`, sorted by step; a step logged twice (a resumed run logs again the
  steps after its checkpoint) keeps its last value."""
  by_step = {}
  for r in records:
    if r.get(key) is not None:
      by_step[int(r['step'])] = float(r[key])
  return sorted(by_step.items())
