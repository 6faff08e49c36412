"""ddpm-jax's U-Net parameters <-> diffusers' `UNet2DModel` state_dict, one tensor each.

With the DDPM layout (`diffusers_config.unet_config`), every parameter of `ddpm_jax.models.UNet`
is one tensor of `UNet2DModel` and the two networks compute the same function
(tests/test_interop.py checks it against diffusers' own output):

  ours (Flax path)                          diffusers (state_dict key)
  temb_dense0, temb_dense1                  time_embedding.linear_1, .linear_2
  label_emb (num_classes + 1 rows)          class_embedding (num_class_embeds rows)
  conv_in, norm_out, conv_out               conv_in, conv_norm_out, conv_out
  down_{i}_block_{j}                        down_blocks.{i}.resnets.{j}
  down_{i}_attn_{j}                         down_blocks.{i}.attentions.{j}
  down_{i}_downsample/conv                  down_blocks.{i}.downsamplers.0.conv
  mid_block_1, mid_attn_1, mid_block_2      mid_block.resnets.0, .attentions.0, .resnets.1
  up_{i}_block_{j}, up_{i}_attn_{j}         up_blocks.{L-1-i}.resnets.{j}, .attentions.{j}
  up_{i}_upsample/conv                      up_blocks.{L-1-i}.upsamplers.0.conv

(L = len(ch_mult): diffusers numbers its up blocks from the lowest resolution; inside the
blocks, `_RESNET` and `_ATTN` below map the layers' names.) Leaves:
`kernel` / GroupNorm `scale` / `embedding` -> `weight`, `bias` -> `bias`. Layouts: 3x3
convolution kernels HWIO <-> OIHW, dense kernels (in, out) <-> (out, in), the 1x1 shortcut
(in, out) <-> (out, in, 1, 1). Transposes only, so a round trip is exact bit for bit.

Older diffusers files name the attention projections `query`, `key`, `value` and `proj_attn`
(diffusers renames them on load); `from_diffusers` accepts both.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from ddpm_jax.interop import InteropError
from ddpm_jax.metrics import torch_pickle

Path = tuple[str, ...]

_RESNET = {'norm1': 'norm1', 'conv1': 'conv1', 'temb_proj': 'time_emb_proj', 'norm2': 'norm2',
           'conv2': 'conv2', 'nin_shortcut': 'conv_shortcut'}
_ATTN = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}
_TOP = {'temb_dense0': 'time_embedding.linear_1', 'temb_dense1': 'time_embedding.linear_2',
        'label_emb': 'class_embedding', 'conv_in': 'conv_in', 'norm_out': 'conv_norm_out',
        'conv_out': 'conv_out', 'mid_block_1': 'mid_block.resnets.0',
        'mid_block_2': 'mid_block.resnets.1', 'mid_attn_1': 'mid_block.attentions.0'}
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}
_LEVEL = re.compile(r'(down|up)_(\d+)_(?:(block|attn)_(\d+)|(downsample|upsample))$')
_DEPRECATED = re.compile(r'(attentions\.\d+)\.(query|key|value|proj_attn)\.')
_DEPRECATED_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}


def _module(name: str, num_levels: int) -> tuple[str, dict[str, str] | None]:
  """Our top-level module name -> (diffusers prefix, its child-name map or None)."""
  if name in _TOP:
    inner = _ATTN if 'attn' in name else _RESNET if 'block' in name else None
    return _TOP[name], inner
  m = _LEVEL.match(name)
  if not m:
    raise InteropError(f'ddpm-jax parameter {name!r} has no diffusers UNet2DModel counterpart.')
  side, level, kind, j, resample = m.groups()
  index = int(level) if side == 'down' else num_levels - 1 - int(level)
  if resample:
    return f'{side}_blocks.{index}.{resample}rs.0', {'conv': 'conv'}
  if kind == 'block':
    return f'{side}_blocks.{index}.resnets.{j}', _RESNET
  return f'{side}_blocks.{index}.attentions.{j}', _ATTN


def diffusers_key(path: Path, num_levels: int) -> str:
  """The diffusers state_dict key of our parameter at `path`, e.g.
  ('up_1_attn_0', 'q', 'kernel') -> 'up_blocks.2.attentions.0.to_q.weight' for 4 levels."""
  prefix, inner = _module(path[0], num_levels)
  middle = [p for p in path[1:-1] if p != 'group_norm']  # Normalize keeps its scale/bias there.
  if path[-1] not in _LEAF or len(middle) > 1 or (middle and middle[0] not in (inner or {})):
    raise InteropError(f'ddpm-jax parameter {"/".join(path)} has no diffusers counterpart.')
  return '.'.join([prefix] + [inner[m] for m in middle] + [_LEAF[path[-1]]])


def to_torch_layout(value: np.ndarray, key: str) -> np.ndarray:
  """Our array -> diffusers' layout for `key` (HWIO -> OIHW, (in, out) -> (out, in) or, for a
  1x1 convolution, (out, in, 1, 1))."""
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2 and not key.endswith('class_embedding.weight'):
    value = value.T
    return value[:, :, None, None] if '.conv_shortcut.' in key else value
  return value


def from_torch_layout(value: np.ndarray, shape: tuple[int, ...], key: str) -> np.ndarray:
  """diffusers' tensor for `key` -> our layout of `shape`, or InteropError naming both shapes."""
  out = value
  if len(shape) == 4 and value.ndim == 4:
    out = value.transpose(2, 3, 1, 0)
  elif len(shape) == 2 and not key.endswith('class_embedding.weight'):
    if value.ndim == 4 and value.shape[2:] == (1, 1):  # A 1x1 convolution.
      value = value[:, :, 0, 0]
    out = value.T if value.ndim == 2 else value
  if tuple(out.shape) != tuple(shape):
    raise InteropError(f'diffusers tensor {key} has shape {tuple(value.shape)}; the config '
                       f'needs {tuple(shape)} in ddpm-jax\'s layout. Its config.json does not '
                       f'describe its weights.')
  return out


def rename_deprecated(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Older diffusers attention names (`query`, `key`, `value`, `proj_attn`) -> today's."""
  return {_DEPRECATED.sub(lambda m: f'{m.group(1)}.{_DEPRECATED_NAMES[m.group(2)]}.', k): v
          for k, v in state_dict.items()}


def from_diffusers(state_dict: Mapping[str, np.ndarray], shapes: Mapping[Path, tuple],
                   num_levels: int) -> dict[Path, np.ndarray]:
  """diffusers' state_dict -> our flat parameters {path: float32 array} for every path of
  `shapes` (our parameter paths and shapes). Every tensor must be used and none may be
  missing; float32 tensors are copied bit for bit, others converted to float32."""
  given = rename_deprecated(state_dict)
  wanted = {path: diffusers_key(path, num_levels) for path in shapes}
  mismatch = torch_pickle.key_mismatch(given, wanted.values(), 'tensors')
  if mismatch:
    raise InteropError(f'The diffusers weights do not fit the config: {mismatch}.')
  out = {}
  for path, key in wanted.items():
    value = np.asarray(given[key], np.float32)  # No copy when float32 already.
    out[path] = np.ascontiguousarray(from_torch_layout(value, tuple(shapes[path]), key))
  return out


def to_diffusers(flat_params: Mapping[Path, np.ndarray], num_levels: int) -> dict[str, np.ndarray]:
  """Our flat parameters {path: array} -> diffusers' state_dict {key: float32 array}."""
  out = {}
  for path, value in flat_params.items():
    key = diffusers_key(path, num_levels)
    out[key] = np.ascontiguousarray(to_torch_layout(np.asarray(value, np.float32), key))
  return out
