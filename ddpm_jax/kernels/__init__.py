"""Platform backends for the U-Net: the functions it computes with (`ddpm_jax.models.ops.Ops`),
chosen once per run from `config.model.kernels`:

* 'xla': stock JAX (`ddpm_jax.models.ops.XLA`), on every platform.
* 'cpu': the CPU backend, for a single CPU device: convolutions through oneDNN
  (`onednn.py`, when it can be built here; XLA's otherwise) with dense layers over images as
  1x1 convolutions (`conv.py`), the upsampling convolution computed at the low resolution
  (`upsample.py`), the attention as two plain products (`attention.py`), and GroupNorm,
  swish and dropout fused with a hand-written backward pass (`group_norm.py`).
* 'auto' (the default): 'cpu' on a single CPU device in float32, where it measured faster
  (README, "Benchmarks"); 'xla' elsewhere (accelerators, several devices, bfloat16).

The backend changes neither the parameters nor the function (tests/test_kernels.py).
"""

from __future__ import annotations

import logging

from ddpm_jax.kernels import attention, conv, group_norm, onednn, upsample
from ddpm_jax.models.ops import XLA, Ops

KERNELS = ('auto', 'xla', 'cpu')

CPU = Ops(name='cpu', conv_general_dilated=conv.conv_general_dilated,
          dot_general=conv.dot_general, upsample_conv=upsample.upsample_conv,
          dot_product_attention=attention.dot_product_attention,
          group_norm=group_norm.group_norm)


def select(name: str, platform: str, device_count: int, compute_dtype: str) -> Ops:
  """The backend `name` ('auto' | 'xla' | 'cpu') for a run on `device_count` devices of
  `platform` ('cpu', 'gpu', 'tpu') computing in `compute_dtype` ('float32', 'bfloat16', ...).
  Raises ValueError, naming the config key, for 'cpu' anywhere but on one CPU device (the name
  itself is checked with the rest of the config, `ddpm_jax.config_checks`)."""
  if name == 'auto':
    name = ('cpu' if platform == 'cpu' and device_count == 1 and compute_dtype == 'float32'
            else 'xla')
  if name == 'xla':
    return XLA
  if platform != 'cpu' or device_count != 1:
    raise ValueError(f"config.model.kernels='cpu' needs a single CPU device; this run has "
                     f"{device_count} {platform} device(s): use 'auto' or 'xla'.")
  return CPU


def from_config(config, mesh=None) -> Ops:
  """`select` for `config.model.kernels` and `config.train.compute_dtype` on the devices of
  `mesh` (all devices when None); logs which backend it is."""
  import jax
  devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
  ops = select(config.model.kernels, devices[0].platform, len(devices),
               config.train.compute_dtype)
  logging.getLogger(__name__).info('U-Net kernels: %s', describe(ops))
  return ops


def describe(ops: Ops) -> str:
  """One line for logs: the backend and, for the CPU backend, whose convolutions it runs."""
  if ops.name != 'cpu':
    return f'{ops.name} (stock JAX)'
  return f'cpu (fused GroupNorm; {onednn.describe()})'
