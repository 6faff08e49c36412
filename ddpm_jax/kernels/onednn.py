"""2-D convolutions through oneDNN on CPU (`onednn_conv.cc`, called as XLA FFI custom calls),
with the forward pass, input gradient and kernel gradient each one oneDNN primitive: the CPU
backend's convolutions (`ddpm_jax.kernels.conv`).

Why: on the benchmark CPU oneDNN runs the U-Net's 3x3 convolutions faster than XLA:CPU's own
convolution, forward and both gradients, and it skips the zero padding (README, "Benchmarks",
has the figures).

The custom call runs on one device: XLA cannot split it across devices, so the CPU backend
is for a single CPU device (`ddpm_jax.kernels.select`).

The first use in a process compiles `onednn_conv.cc` (g++, a few seconds) against jaxlib's FFI
headers and the oneDNN of the pip packages `onednn-cpu-gomp` and `onednn-devel-cpu-gomp`
(the `[cpu]` extra, requirements.txt), into `$DDPM_JAX_NATIVE_DIR` (default
~/.cache/ddpm_jax/native), under a name that changes with the source and the versions; later
processes load it. If anything of that is missing (another OS or CPU architecture, no
compiler, no oneDNN), `available()` is False, with one warning saying why, and the CPU backend
keeps XLA's convolutions. oneDNN's threads are GNU OpenMP's (OMP_NUM_THREADS; all cores by
default).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading

import jax
import numpy as np
from jax import lax

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
TARGETS = {'forward': 'DdpmOnednnConvForward',
           'input_grad': 'DdpmOnednnConvInputGrad',
           'kernel_grad': 'DdpmOnednnConvKernelGrad'}
_LOCK = threading.Lock()
_STATUS: dict = {}  # Process-wide: whether the library is loaded and its targets registered.


def _prefix() -> str:
  """Where pip installed the oneDNN packages' include/ and lib/ (the environment's root)."""
  return sysconfig.get_paths()['data']


def _onednn_version() -> str:
  try:
    return importlib.metadata.version('onednn-cpu-gomp')
  except importlib.metadata.PackageNotFoundError:
    return 'unknown'


def library_path() -> str:
  """The compiled library's path: the build directory and a hash of the source, jaxlib's and
  oneDNN's versions."""
  h = hashlib.sha256(open(SOURCE, 'rb').read())
  h.update(f'{jax.__version__} {importlib.metadata.version("jaxlib")} {_onednn_version()} '
           f'{_prefix()}'.encode())
  directory = os.environ.get('DDPM_JAX_NATIVE_DIR') or os.path.expanduser(
      '~/.cache/ddpm_jax/native')
  return os.path.join(directory, f'libddpm_onednn_conv-{h.hexdigest()[:16]}.so')


def unavailable_reason() -> str | None:
  """Why oneDNN cannot be used here without trying to build, or None."""
  if not sys.platform.startswith('linux') or platform.machine() not in ('x86_64', 'AMD64'):
    return f'oneDNN convolutions are built for Linux x86-64 only, not {sys.platform} ' \
           f'{platform.machine()}'
  prefix = _prefix()
  if not os.path.exists(os.path.join(prefix, 'include', 'oneapi', 'dnnl', 'dnnl.hpp')) or \
     not os.path.exists(os.path.join(prefix, 'lib', 'libdnnl.so')):
    return (f'no oneDNN headers and library under {prefix} (the [cpu] extra: pip '
            'install ".[cpu]", or requirements.txt)')
  return None


def build() -> str:
  """Compiles `onednn_conv.cc` unless `library_path()` exists; returns that path. Raises
  RuntimeError with the compiler's output when compiling fails."""
  path = library_path()
  if os.path.exists(path):
    return path
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not compiler:
    raise RuntimeError('no C++ compiler (g++) to build the oneDNN convolutions')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  prefix = _prefix()
  # Several processes may build at once: each writes its own file, then renames it into place.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
  os.close(fd)
  cmd = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', SOURCE,
         '-I', jax.ffi.include_dir(), '-I', os.path.join(prefix, 'include'),
         '-L', os.path.join(prefix, 'lib'), '-ldnnl',
         '-Wl,-rpath,' + os.path.join(prefix, 'lib'), '-o', tmp]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f'building the oneDNN convolutions failed ({" ".join(cmd)}):\n'
                       f'{result.stderr[-4000:]}')
  os.replace(tmp, path)
  return path


def available() -> bool:
  """Whether the oneDNN convolutions are built, loaded and registered with XLA:CPU (doing
  so on the first call). False, with one warning giving the reason, when they cannot be."""
  with _LOCK:
    if 'ok' not in _STATUS:
      reason = unavailable_reason()
      if reason is None:
        try:
          lib = ctypes.cdll.LoadLibrary(build())
          for name in TARGETS.values():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)),
                                        platform='cpu')
          _STATUS['library'] = lib
        except (OSError, RuntimeError, AttributeError) as e:
          reason = str(e)
      if reason is not None:
        logging.getLogger(__name__).warning(
            'Using XLA\'s convolutions on CPU, not oneDNN\'s: %s', reason)
      _STATUS['ok'] = reason is None
      _STATUS['reason'] = reason
    return _STATUS['ok']


def output_shape(x_shape, w_shape, strides, pads) -> tuple:
  """(N, OH, OW, O) of an NHWC input and HWIO kernel with explicit (low, high) padding."""
  N, H, W, _ = x_shape
  KH, KW, _, O = w_shape
  OH = (H + pads[0][0] + pads[0][1] - KH) // strides[0] + 1
  OW = (W + pads[1][0] + pads[1][1] - KW) // strides[1] + 1
  return (N, OH, OW, O)


def _call(kind: str, shape, a, b, strides, pads):
  # Under jax.vmap (the samplers vmap the model in places), one call per vmapped element.
  (pt, pb), (pl, pr) = pads
  return jax.ffi.ffi_call(TARGETS[kind], jax.ShapeDtypeStruct(shape, a.dtype),
                          vmap_method='sequential')(
      a, b, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
      pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  return _call('forward', output_shape(x.shape, w.shape, strides, pads), x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, dy):
  x, w = residuals
  return (_call('input_grad', x.shape, dy, w, strides, pads),
          _call('kernel_grad', w.shape, x, dy, strides, pads))


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, w, strides=(1, 1), padding='SAME'):
  """`lax.conv_general_dilated(x, w, strides, padding)` with NHWC / HWIO / NHWC dimensions,
  float32, through oneDNN (needs `available()`). `padding`: 'SAME', 'VALID' or (low, high)
  pairs for H and W. Equal to XLA's convolution up to float rounding, gradients included."""
  if not available():
    raise RuntimeError(f'oneDNN convolutions unavailable: {_STATUS["reason"]}')
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(x, w, strides, pads)


def _valid_taps(size: int, kernel: int, out: int, stride: int, pad_low: int) -> int:
  """Kernel taps, summed over output positions, that land inside an input of `size`."""
  return sum(1 for o in range(out) for k in range(kernel) if 0 <= o * stride - pad_low + k < size)


def custom_call_flops(hlo_text: str) -> float:
  """FLOPs of the oneDNN convolution custom calls in compiled HLO text, which XLA's cost
  analysis does not count; counted as XLA counts a convolution: 2 per multiply-add, taps
  that fall on padding excluded. The forward pass and either gradient do the same number."""
  total = 0.0
  dims = lambda s: [int(d) for d in s.split(',') if d]
  for line in hlo_text.splitlines():
    m = re.search(r'= f32\[([\d,]*)\]\S* custom-call\(.*custom_call_target="(\w+)"', line)
    if not m or m.group(2) not in TARGETS.values():
      continue
    out = dims(m.group(1))
    constraints = line[line.index('operand_layout_constraints='):]
    ops = [dims(d) for d in re.findall(r'f32\[([\d,]*)\]', constraints)[:2]]
    attr = {k: int(v) for k, v in re.findall(r'(\w+) = (-?\d+) : i64', line)}
    kind = m.group(2)
    if kind == TARGETS['forward']:
      x, w, y = ops[0], ops[1], out
    elif kind == TARGETS['input_grad']:
      y, w, x = ops[0], ops[1], out
    else:
      x, y, w = ops[0], ops[1], out
    total += 2.0 * x[0] * w[2] * w[3] * (
        _valid_taps(x[1], w[0], y[1], attr['sh'], attr['pt'])
        * _valid_taps(x[2], w[1], y[2], attr['sw'], attr['pl']))
  return total


def describe() -> str:
  """One line for logs and setup: whether the oneDNN convolutions are used, and why not."""
  if available():
    return f'oneDNN convolutions: on ({library_path()})'
  return f'oneDNN convolutions: off ({_STATUS["reason"]})'
