"""Shared measurement helpers: timing, XLA cost analysis, matmul peak, memory."""

from __future__ import annotations

import importlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from ddpm_jax import xla_flags
from ddpm_jax.kernels import onednn


def define_cpu_preset_flag(default: str) -> None:
  """`--cpu_preset`: the XLA:CPU preset a benchmark runs under (as the CLI uses for its job)."""
  flags.DEFINE_enum('cpu_preset', default, ['train', 'inference', 'none'],
                    'XLA:CPU preset (ddpm_jax/xla_flags.py; none = XLA defaults), as the CLI '
                    'uses for this job.')


def apply_cpu_preset() -> None:
  """Puts `--cpu_preset` into XLA_FLAGS; call first in main(), before any JAX computation
  (importing jax and ddpm_jax creates no backend yet)."""
  xla_flags.apply_cpu_preset(flags.FLAGS.cpu_preset)


def load_config(path: str, overrides: dict | None = None):
  """`get_config()` of a config file given as a path (configs/x.py) or module (configs.x)."""
  module = path[:-3].replace('/', '.') if path.endswith('.py') else path
  config = importlib.import_module(module).get_config()
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def time_calls(fn, n: int, warmup: int = 2) -> np.ndarray:
  """Wall time in seconds of `n` calls of `fn()` (each blocked until ready) after `warmup`."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return np.asarray(times)


def spread(times: np.ndarray) -> str:
  """'median ± half the interquartile range' in milliseconds."""
  q1, med, q3 = np.percentile(times, [25, 50, 75])
  return f'{med * 1e3:.1f}±{(q3 - q1) / 2 * 1e3:.1f} ms'


def compiled_flops(compiled) -> float:
  """FLOPs of one call from XLA's cost analysis (0 when the backend does not report them),
  plus those of the oneDNN convolutions, which it does not see."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return (float((cost or {}).get('flops', 0.0))
          + onednn.custom_call_flops(compiled.as_text()))


def matmul_peak_gflops(dtype=jnp.float32, n: int = 2048, reps: int = 10) -> float:
  """Achieved GFLOP/s of a jitted n x n matmul in this process: the machine's practical peak."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  t = time_calls(lambda: f(a, b), reps, warmup=2)
  return 2 * n**3 / np.median(t) / 1e9


def peak_host_memory_gib() -> float:
  """Peak resident memory of this process (ru_maxrss) in GiB."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (1024**3 if sys.platform == 'darwin' else 1024**2)


def device_memory_gib() -> str:
  """Peak device memory on accelerators ('n/a' on CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return f'{peak / 1024**3:.2f} GiB' if peak else 'n/a'


def device_name() -> str:
  d = jax.devices()[0]
  return f'{jax.device_count()}x {getattr(d, "device_kind", d.platform)}'
