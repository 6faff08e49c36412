"""Scalars to TensorBoard event files and to a JSON-lines file in the workdir (process 0 only)."""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """Writes scalars to `workdir/tensorboard/` (TensorBoard) and `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # Imported lazily: only process 0 writes.
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

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

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False
