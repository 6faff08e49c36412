"""XLA:CPU settings that make ddpm-jax's U-Net faster on a CPU, measured on 2 cores with the
CIFAR-10 model by `benchmarks/` (the command lines' `--cpu_preset`, by default the job's):

* `train`: convolutions left to XLA's own convolution runtime instead of the default YNNPACK
  library fusions (dots and reductions stay with YNNPACK): a faster train step.
* `inference`: convolutions and dots left to XLA's own emitters instead of YNNPACK (reductions
  stay with YNNPACK, which the CPU backend's GroupNorm, `ddpm_jax.kernels.group_norm`, needs:
  it is slower with XLA's own reductions): a faster forward pass; the same flags slow
  training down, hence two presets.

They only change how XLA:CPU compiles (accelerator backends ignore them) and must be in
`XLA_FLAGS` before JAX creates its CPU client. A user's own `XLA_FLAGS` choice of these library
fusions wins.
"""

from __future__ import annotations

import os

CPU_PRESETS = {
    'train': '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
    'inference': '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,'
                 '-individual_dot',
    'none': '',
}
_OWN_KEYS = ('ynn_fusion_type', 'xnn_fusion_type')


def apply_cpu_preset(preset: str, environ=None) -> str:
  """Appends the preset's flags to `XLA_FLAGS` (unless it already chooses these fusions) and
  returns the resulting value. Call before the first JAX computation."""
  if preset not in CPU_PRESETS:
    raise ValueError(f'Unknown XLA:CPU preset {preset!r}; one of {sorted(CPU_PRESETS)}.')
  environ = os.environ if environ is None else environ
  current = environ.get('XLA_FLAGS', '')
  if CPU_PRESETS[preset] and not any(k in current for k in _OWN_KEYS):
    environ['XLA_FLAGS'] = f'{current} {CPU_PRESETS[preset]}'.strip()
  return environ.get('XLA_FLAGS', '')
