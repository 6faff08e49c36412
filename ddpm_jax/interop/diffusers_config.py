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
    flip_sin_to_cos=True, mid_block_type='UNetMidBlock2D', layers_per_block=2,
    mid_block_scale_factor=1, downsample_padding=1, downsample_type='conv',
    upsample_type='conv', dropout=0.0, act_fn='silu', attention_head_dim=8, norm_num_groups=32,
    attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift='default',
    add_attention=True, class_embed_type=None, num_class_embeds=None, num_train_timesteps=None)
# The paper's U-Net: fields whose value is not a config choice of ours.
DDPM_LAYOUT = dict(
    center_input_sample=False, time_embedding_type='positional', flip_sin_to_cos=False,
    freq_shift=1, mid_block_type='UNetMidBlock2D', mid_block_scale_factor=1,
    downsample_padding=0, act_fn='silu', norm_eps=1e-6, resnet_time_scale_shift='default',
    add_attention=True, class_embed_type=None, attn_norm_num_groups=None)
SCHEDULER_DEFAULTS = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule='linear',
    trained_betas=None, variance_type='fixed_small', clip_sample=True,
    prediction_type='epsilon', thresholding=False, clip_sample_range=1.0,
    rescale_betas_zero_snr=False)

_SCHEDULES = {'linear': 'linear', 'quadratic': 'scaled_linear', 'cosine': 'squaredcos_cap_v2'}
_VARIANCES = {'fixedlarge': 'fixed_large', 'fixedsmall': 'fixed_small',
              'learned_range': 'learned_range'}
_PREDICTIONS = {'eps': 'epsilon', 'x0': 'sample', 'v': 'v_prediction'}
# diffusers variance types with the same sampler as one of ours (the *_log ones differ only in
# how diffusers computes the same variance).
_VARIANCE_ALIASES = {**{v: k for k, v in _VARIANCES.items()},
                     'fixed_large_log': 'fixedlarge', 'fixed_small_log': 'fixedsmall'}


def _learned_var(config) -> bool:
  return config.diffusion.var_type in diffusion.LEARNED_VAR_TYPES


def _levels(config) -> list[int]:
  """Resolution of each level of the U-Net (image_size / 2**i)."""
  return [config.data.image_size // 2**i for i in range(len(config.model.ch_mult))]


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
  levels = _levels(config)
  down = ['AttnDownBlock2D' if r in attn else 'DownBlock2D' for r in levels]
  num_classes = int(m.num_classes)
  out = dict(UNET_DEFAULTS, **DDPM_LAYOUT)
  out.update(
      sample_size=int(config.data.image_size), in_channels=int(config.data.channels),
      out_channels=int(config.data.channels) * (2 if _learned_var(config) else 1),
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
# Checking (import).


def _ours_vs(field: str, ours, theirs, key: str = '') -> str:
  return (f'config.{field} is {ours!r} here but {theirs!r} in the diffusers model'
          + (f' ({key})' if key else ''))


def _fixed(name: str, theirs, ours) -> str:
  return (f'the diffusers model has {name}={theirs!r}, ddpm-jax\'s U-Net (the paper\'s) '
          f'{ours!r}')


def check_unet_config(dcfg: dict, config) -> list[str]:
  """Every way the `UNet2DModel` config `dcfg` differs from the U-Net of `config`: messages
  naming our config field and both values (empty: they describe the same network)."""
  d = dict(UNET_DEFAULTS, **dcfg)
  m, data = config.model, config.data
  out = []
  if dcfg.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
    return [f"the diffusers model is a {dcfg['_class_name']}, not a UNet2DModel"]
  size = d['sample_size']  # None: any size; a square (H, W) as one number.
  if isinstance(size, (list, tuple)):
    d['sample_size'] = size[0] if len(set(size)) == 1 else tuple(size)
  same = {'sample_size': ('data.image_size', data.image_size),
          'in_channels': ('data.channels', data.channels),
          'layers_per_block': ('model.num_res_blocks', m.num_res_blocks),
          'norm_num_groups': ('model.num_groups', m.num_groups)}
  out += [_ours_vs(field, ours, d[key], key) for key, (field, ours) in same.items()
          if d[key] not in (ours, None)]
  want_out = d['in_channels'] * (2 if _learned_var(config) else 1)
  if d['out_channels'] != want_out:
    kind = ('a learned variance' if d['out_channels'] == 2 * d['in_channels']
            else 'no learned variance' if d['out_channels'] == d['in_channels'] else 'neither')
    out.append(_ours_vs('diffusion.var_type', config.diffusion.var_type,
                        f'{d["out_channels"]} output channels: {kind}', 'out_channels'))
  widths = list(d.get('block_out_channels') or [])
  if widths and widths[0] != m.ch:
    out.append(_ours_vs('model.ch', m.ch, widths[0], 'block_out_channels[0]'))
  elif widths:
    mult = tuple(w / m.ch if w % m.ch else w // m.ch for w in widths)  # 1.5: no ch_mult.
    if mult != tuple(m.ch_mult):
      out.append(_ours_vs('model.ch_mult', tuple(m.ch_mult), mult, f'block_out_channels {widths}'))
  out += _check_blocks(d, config)
  num_classes = int(m.num_classes)
  embeds = d['num_class_embeds']
  if (embeds or 0) != (num_classes + 1 if num_classes else 0):
    theirs = 0 if not embeds else embeds - 1
    out.append(_ours_vs('model.num_classes', num_classes, theirs,
                        f'num_class_embeds={embeds}: the classes and a null label'))
  if d['downsample_type'] != 'conv' or d['upsample_type'] != 'conv' or not m.resamp_with_conv:
    out.append(_ours_vs('model.resamp_with_conv', bool(m.resamp_with_conv),
                        f'{d["downsample_type"]}/{d["upsample_type"]}',
                        'downsample_type/upsample_type'))
  for name, value in DDPM_LAYOUT.items():
    close = isinstance(value, float) and isinstance(d[name], (int, float)) and np.isclose(
        d[name], value, rtol=1e-6, atol=0)
    if d[name] != value and not close:
      out.append(_fixed(name, d[name], value))
  if d['time_embedding_dim'] not in (None, 4 * m.ch):
    out.append(_fixed('time_embedding_dim', d['time_embedding_dim'], 4 * m.ch))
  return out


def _check_blocks(d: dict, config) -> list[str]:
  """Block types: plain or attention down/up blocks, attention at the same levels both ways,
  one attention head (attention_head_dim None or the level's width)."""
  known_down, known_up = ('DownBlock2D', 'AttnDownBlock2D'), ('UpBlock2D', 'AttnUpBlock2D')
  down, up = list(d.get('down_block_types') or []), list(d.get('up_block_types') or [])
  odd = [b for b in down if b not in known_down] + [b for b in up if b not in known_up]
  if odd:
    return [f'the diffusers model has blocks {odd}, which ddpm-jax\'s U-Net does not have '
            f'(only {known_down + known_up})']
  levels = _levels(config)
  if len(down) != len(levels):
    return []  # Reported as block_out_channels / ch_mult.
  if [b.replace('Up', 'Down') for b in reversed(up)] != down:
    return [f'the diffusers model has attention at different levels going down {down} and '
            f'up {up}; ddpm-jax\'s U-Net has it at the same resolutions both ways']
  theirs = tuple(r for r, b in zip(levels, down) if b == 'AttnDownBlock2D')
  out = []
  if set(theirs) != set(config.model.attn_resolutions):
    out.append(_ours_vs('model.attn_resolutions', tuple(config.model.attn_resolutions), theirs,
                        'the AttnDownBlock2D levels'))
  head_dim = d['attention_head_dim']
  widths = list(d.get('block_out_channels') or [])
  attn_widths = {w for w, b in zip(widths, down) if b == 'AttnDownBlock2D'} | set(widths[-1:])
  if head_dim is not None and any(w != head_dim for w in attn_widths):
    out.append(_fixed('attention_head_dim', head_dim,
                      'None (one head over all channels, '
                      f'{", ".join(str(w) for w in sorted(attn_widths))} wide)'))
  return out


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
  of `config.sample`: messages naming our field and both values."""
  s = dict(SCHEDULER_DEFAULTS, **scfg)
  f = config.diffusion
  out = []
  if s['num_train_timesteps'] != f.num_timesteps:
    out.append(_ours_vs('diffusion.num_timesteps', f.num_timesteps, s['num_train_timesteps'],
                        'num_train_timesteps'))
  theirs = _diffusers_betas(s)
  if theirs is None:
    out.append(_ours_vs('diffusion.schedule', f.schedule, s['beta_schedule'],
                        'a beta_schedule ddpm-jax does not have'))
  elif len(theirs) == f.num_timesteps:
    if not np.allclose(schedules.config_betas(f), theirs, rtol=1e-6, atol=0):
      described = (f'trained_betas from {theirs[0]:.6g} to {theirs[-1]:.6g}'
                   if s['trained_betas'] is not None else
                   f'{s["beta_schedule"]} from {s["beta_start"]} to {s["beta_end"]}')
      out.append(_ours_vs('diffusion.schedule/beta_start/beta_end',
                          (f.schedule, f.beta_start, f.beta_end), described, 'betas'))
  ours_var = _VARIANCE_ALIASES.get(s['variance_type'])
  if ours_var != f.var_type:
    out.append(_ours_vs('diffusion.var_type', f.var_type, s['variance_type'], 'variance_type'
                        + ('' if ours_var else ', which ddpm-jax does not have')))
  pred = {v: k for k, v in _PREDICTIONS.items()}.get(s['prediction_type'], s['prediction_type'])
  if pred != f.mean_type:
    out.append(_ours_vs('diffusion.mean_type', f.mean_type, s['prediction_type'],
                        'prediction_type'))
  if bool(s['clip_sample']) != bool(config.sample.clip_denoised):
    out.append(_ours_vs('sample.clip_denoised', bool(config.sample.clip_denoised),
                        bool(s['clip_sample']), 'clip_sample'))
  if s['clip_sample'] and s['clip_sample_range'] != 1.0:
    out.append(_fixed('clip_sample_range', s['clip_sample_range'], 1.0))
  out += [_fixed(k, True, False) for k in ('thresholding', 'rescale_betas_zero_snr') if s[k]]
  return out
