"""diffusers' `config.json` (UNet2DModel) and `scheduler_config.json` (DDPMScheduler) <-> our
config: written for an export, checked field by field on an import.

What each diffusers field stands for in ddpm-jax:
  sample_size, in_channels        config.data.image_size, config.data.channels
  out_channels                    channels, doubled by a learned variance (diffusion.var_type)
  block_out_channels              config.model.ch * config.model.ch_mult
  layers_per_block                config.model.num_res_blocks
  Attn{Down,Up}Block2D levels     config.model.attn_resolutions
  norm_num_groups                 config.model.num_groups
  num_class_embeds                config.model.num_classes + 1 (the last row: the null label of
                                  classifier-free guidance, which diffusers treats as a class)
  num_train_timesteps             config.diffusion.num_timesteps
  beta_schedule, beta_start/end,  config.diffusion.schedule (linear | quadratic = scaled_linear |
  trained_betas                   cosine = squaredcos_cap_v2 | const, as trained_betas), betas
  variance_type                   config.diffusion.var_type (fixed_large, fixed_small,
                                  learned_range)
  prediction_type                 config.diffusion.mean_type (epsilon, sample = x0, v_prediction)
  clip_sample                     config.sample.clip_denoised
The rest of `config.json` is the paper's U-Net itself (one attention head, GroupNorm eps 1e-6,
sinusoidal embedding without flip and with freq_shift 1, stride-2 convolutions padded only on
the bottom/right, convolutional resampling), checked as such. Fields a file leaves out take
diffusers' defaults, as `from_pretrained` does.
"""

from __future__ import annotations

import numpy as np

from ddpm_jax import diffusion, schedules
from ddpm_jax.interop import InteropError

# The diffusers version the written files were checked with (`_diffusers_version`).
DIFFUSERS_VERSION = '0.42.1'

# UNet2DModel.__init__ defaults: what `from_pretrained` uses for a field a config.json omits.
UNET_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type='positional', time_embedding_dim=None, freq_shift=0,
    flip_sin_to_cos=True, down_block_types=['DownBlock2D'] + ['AttnDownBlock2D'] * 3,
    up_block_types=['AttnUpBlock2D'] * 3 + ['UpBlock2D'], block_out_channels=[224, 448, 672, 896],
    mid_block_type='UNetMidBlock2D', layers_per_block=2,
    mid_block_scale_factor=1, downsample_padding=1, downsample_type='conv',
    upsample_type='conv', dropout=0.0, act_fn='silu', attention_head_dim=8, norm_num_groups=32,
    attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift='default',
    add_attention=True, class_embed_type=None, num_class_embeds=None, num_train_timesteps=None)
# The paper's U-Net: fields whose value is not a config choice of ours.
DDPM_LAYOUT = dict(
    center_input_sample=False, time_embedding_type='positional', flip_sin_to_cos=False,
    freq_shift=1, mid_block_type='UNetMidBlock2D', mid_block_scale_factor=1,
    downsample_padding=0, downsample_type='conv', upsample_type='conv', act_fn='silu',
    norm_eps=1e-6, resnet_time_scale_shift='default', add_attention=True, class_embed_type=None,
    attn_norm_num_groups=None)
SCHEDULER_DEFAULTS = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
    trained_betas=None, variance_type='fixed_small', clip_sample=True,
    prediction_type='epsilon', thresholding=False, clip_sample_range=1.0,
    rescale_betas_zero_snr=False)

_SCHEDULES = {'linear': 'linear', 'quadratic': 'scaled_linear', 'cosine': 'squaredcos_cap_v2'}
_VARIANCES = {'fixedlarge': 'fixed_large', 'fixedsmall': 'fixed_small',
              'learned_range': 'learned_range'}
_PREDICTIONS = {'eps': 'epsilon', 'x0': 'sample', 'v': 'v_prediction'}
# diffusers variance types that are one of ours computed another way (from the log variance).
_VARIANCE_SPELLINGS = {'fixed_large_log': 'fixed_large', 'fixed_small_log': 'fixed_small'}


# ---------------------------------------------------------------------------------------------
# Writing (export).


def unet_config(config) -> dict:
  """The `config.json` of a `UNet2DModel` computing our U-Net of `config`.

  Raises InteropError for what UNet2DModel cannot express (pooling / plain nearest resampling,
  `config.model.resamp_with_conv=False`).
  """
  m = config.model
  if not m.resamp_with_conv:
    raise InteropError('config.model.resamp_with_conv=False (average-pool downsampling, no '
                       'upsampling convolution) has no diffusers UNet2DModel equivalent: its '
                       'DownBlock2D / UpBlock2D resample with convolutions.')
  attn = set(m.attn_resolutions)
  levels = [config.data.image_size // 2**i for i in range(len(m.ch_mult))]
  down = ['AttnDownBlock2D' if r in attn else 'DownBlock2D' for r in levels]
  num_classes = int(m.num_classes)
  out = dict(UNET_DEFAULTS, **DDPM_LAYOUT)
  out.update(
      sample_size=int(config.data.image_size), in_channels=int(config.data.channels),
      out_channels=int(config.data.channels) * (
          2 if config.diffusion.var_type in diffusion.LEARNED_VAR_TYPES else 1),
      down_block_types=down,
      up_block_types=[b.replace('Down', 'Up') for b in reversed(down)],
      block_out_channels=[int(m.ch) * int(c) for c in m.ch_mult],
      layers_per_block=int(m.num_res_blocks), norm_num_groups=int(m.num_groups),
      dropout=float(m.dropout), attention_head_dim=None,
      num_class_embeds=num_classes + 1 if num_classes else None)
  return {'_class_name': 'UNet2DModel', '_diffusers_version': DIFFUSERS_VERSION,
          **dict(sorted(out.items()))}


def scheduler_config(config) -> dict:
  """The `scheduler_config.json` of the `DDPMScheduler` with our schedule, variance, mean type
  and clipping. Raises InteropError for what it cannot express."""
  f = config.diffusion
  if f.var_type not in _VARIANCES:
    raise InteropError(
        f"config.diffusion.var_type='{f.var_type}' has no DDPMScheduler variance_type: "
        "diffusers' 'learned' reads the output as the variance, ddpm-jax's as the log "
        "variance. learned_range, fixedlarge and fixedsmall export.")
  if f.mean_type not in _PREDICTIONS:
    raise InteropError(f"config.diffusion.mean_type='{f.mean_type}' (the posterior mean) has "
                       'no DDPMScheduler prediction_type (epsilon, sample, v_prediction).')
  out = dict(SCHEDULER_DEFAULTS)
  out.update(num_train_timesteps=int(f.num_timesteps), beta_start=float(f.beta_start),
             beta_end=float(f.beta_end), variance_type=_VARIANCES[f.var_type],
             clip_sample=bool(config.sample.clip_denoised),
             prediction_type=_PREDICTIONS[f.mean_type])
  if f.schedule in _SCHEDULES:
    out['beta_schedule'] = _SCHEDULES[f.schedule]
  else:  # No diffusers name: the betas themselves.
    out['trained_betas'] = [float(b) for b in schedules.config_betas(f)]
  return {'_class_name': 'DDPMScheduler', '_diffusers_version': DIFFUSERS_VERSION,
          **dict(sorted(out.items()))}


# ---------------------------------------------------------------------------------------------
# Checking (import): the folder's config against the one we would write, field by field.

# The config keys that set each field (the fields not named are the paper's network itself).
_UNET_KEYS = {
    'sample_size': ('data.image_size',), 'in_channels': ('data.channels',),
    'out_channels': ('data.channels', 'diffusion.var_type'),
    'block_out_channels': ('model.ch', 'model.ch_mult'),
    'layers_per_block': ('model.num_res_blocks',),
    'down_block_types': ('model.attn_resolutions', 'data.image_size'),
    'up_block_types': ('model.attn_resolutions', 'data.image_size'),
    'norm_num_groups': ('model.num_groups',), 'num_class_embeds': ('model.num_classes',)}
_SCHEDULER_KEYS = {
    'num_train_timesteps': ('diffusion.num_timesteps',),
    'variance_type': ('diffusion.var_type',), 'prediction_type': ('diffusion.mean_type',),
    'clip_sample': ('sample.clip_denoised',)}
# Not compared: the training-only dropout, and the timestep count of UNet2DModel's learned time
# embedding (the sinusoidal one has no such count).
_UNET_UNCHECKED = ('dropout', 'num_train_timesteps')
_BETA_FIELDS = ('beta_schedule', 'beta_start', 'beta_end', 'trained_betas')


def _mismatches(theirs: dict, ours: dict, keys: dict, config) -> list[str]:
  """A message for each field whose value in `theirs` (the folder's config) differs from `ours`
  (the config we would write): the diffusers field, both values and the config keys setting it.
  Floats match to 1e-6 relative (JSON round trips); `_class_name` and the like are not compared."""
  out = []
  for field, value in ours.items():
    other = theirs.get(field)
    close = (isinstance(value, float) and isinstance(other, (int, float))
             and np.isclose(other, value, rtol=1e-6, atol=0))
    if field.startswith('_') or other == value or close:
      continue
    if field in keys:
      setting = ', '.join(f'config.{k}={config[k]!r}' for k in keys[field])
      out.append(f'the diffusers model has {field}={other!r}, this config {value!r} ({setting})')
    else:
      out.append(f"the diffusers model has {field}={other!r}, ddpm-jax always {value!r} (the "
                 "paper's model; no config key sets it)")
  return out


def check_unet_config(dcfg: dict, config) -> list[str]:
  """Every way the `UNet2DModel` config `dcfg` differs from the U-Net of `config` (empty: they
  describe the same network). Raises InteropError for a config diffusers cannot express."""
  if dcfg.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
    return [f"the diffusers model is a {dcfg['_class_name']}, not a UNet2DModel"]
  ours = {k: v for k, v in unet_config(config).items() if k not in _UNET_UNCHECKED}
  d = dict(UNET_DEFAULTS, **dcfg)
  # The same network written another way: any size (None) or a square as (H, W); one head
  # whose width is that of each attention layer (its level's, and the middle's).
  size = d['sample_size']
  if size is None or (isinstance(size, list) and size == [ours['sample_size']] * 2):
    d['sample_size'] = ours['sample_size']
  widths, down = d['block_out_channels'], d['down_block_types']
  attn_widths = {w for w, b in zip(widths, down) if b == 'AttnDownBlock2D'} | set(widths[-1:])
  if all(w == d['attention_head_dim'] for w in attn_widths):
    d['attention_head_dim'] = None
  if d['time_embedding_dim'] == 4 * config.model.ch:
    d['time_embedding_dim'] = None
  d['num_class_embeds'] = d['num_class_embeds'] or None
  return _mismatches(d, ours, _UNET_KEYS, config)


def _diffusers_betas(s: dict) -> np.ndarray | None:
  """The betas of a DDPMScheduler config, or None for a schedule ddpm-jax does not have."""
  if s['trained_betas'] is not None:
    return np.asarray(s['trained_betas'], np.float64)
  name = {v: k for k, v in _SCHEDULES.items()}.get(s['beta_schedule'])
  if name is None:
    return None
  return schedules.make_betas(name, int(s['num_train_timesteps']), beta_start=s['beta_start'],
                              beta_end=s['beta_end'])


def check_scheduler_config(scfg: dict, config) -> list[str]:
  """Every way the scheduler config `scfg` differs from `config.diffusion` and the clipping
  of `config.sample`. Raises InteropError for a config diffusers cannot express."""
  ours, s, f = scheduler_config(config), dict(SCHEDULER_DEFAULTS, **scfg), config.diffusion
  s['variance_type'] = _VARIANCE_SPELLINGS.get(s['variance_type'], s['variance_type'])
  if not s['clip_sample']:
    s['clip_sample_range'] = ours['clip_sample_range']  # Unused without clipping.
  out = _mismatches(s, {k: v for k, v in ours.items() if k not in _BETA_FIELDS},
                    _SCHEDULER_KEYS, config)
  theirs = _diffusers_betas(s)
  # Betas of another length are reported as num_train_timesteps.
  if theirs is None or (len(theirs) == f.num_timesteps and not np.allclose(
      schedules.config_betas(f), theirs, rtol=1e-6, atol=0)):
    described = (f'trained_betas from {theirs[0]:.6g} to {theirs[-1]:.6g}'
                 if s['trained_betas'] is not None else
                 f'{s["beta_schedule"]} betas from {s["beta_start"]} to {s["beta_end"]}')
    out.append(f'the diffusers model has {described}, this config {f.schedule} betas from '
               f'{f.beta_start} to {f.beta_end} (config.diffusion.schedule, beta_start, '
               'beta_end)')
  return out
