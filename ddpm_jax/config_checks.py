"""Checks a config's values before anything is built, with errors that name the config key.

Unknown keys and wrongly typed values are already refused by ml_collections (locked configs,
typed overrides); this module checks the values themselves, and the dataset name. Model shapes
are checked by `ddpm_jax.models.create_model`, the data files by the input pipeline.
"""

from __future__ import annotations

from ddpm_jax import diffusion, input_pipeline, kernels, samplers, schedules
from ddpm_jax.errors import ConfigError

SEED_RANGE = 2 ** 32  # Seeds feed NumPy's generators too, which take [0, 2**32).


def _require(ok: bool, key: str, value, expect: str) -> None:
  if not ok:
    raise ConfigError(f'config.{key}={value!r} is invalid: expected {expect}.')


def _int_tuple(value) -> bool:
  return isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)


def _choice(config, key: str, choices) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  _require(value in choices, key, value, 'one of ' + ', '.join(map(repr, choices)))


def validate(config) -> None:
  """Raises ValueError naming the first invalid field of `config`."""
  d, m, f, o, t, s = (config.data, config.model, config.diffusion, config.optim, config.train,
                      config.sample)
  try:
    input_pipeline.check_dataset_name(d.dataset, d.image_size)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(d.image_size >= 4, 'data.image_size', d.image_size, 'an integer >= 4')
  _require(d.channels in (1, 3), 'data.channels', d.channels, '1 or 3')
  _require(m.ch >= 1, 'model.ch', m.ch, 'a positive integer')
  _require(_int_tuple(m.attn_resolutions), 'model.attn_resolutions', m.attn_resolutions,
           'a tuple of resolutions, e.g. (16,)')
  _require(_int_tuple(m.ch_mult) and len(m.ch_mult) >= 1 and all(c >= 1 for c in m.ch_mult), 'model.ch_mult', m.ch_mult,
           'a non-empty tuple of positive integers')
  _require(m.num_res_blocks >= 1, 'model.num_res_blocks', m.num_res_blocks, 'an integer >= 1')
  _require(0.0 <= m.dropout < 1.0, 'model.dropout', m.dropout, 'a rate in [0, 1)')
  _require(m.get('kernels', 'auto') in kernels.KERNELS, 'model.kernels', m.get('kernels'),
           'one of ' + ', '.join(map(repr, kernels.KERNELS)))
  _choice(config, 'diffusion.schedule', schedules.SCHEDULE_NAMES)
  _choice(config, 'diffusion.mean_type', diffusion.MEAN_TYPES)
  _choice(config, 'diffusion.var_type', diffusion.VAR_TYPES)
  _choice(config, 'diffusion.loss', diffusion.LOSS_TYPES)
  # The paper's code asserts against this pair: L_simple has no gradient for the variance
  # output, which then stays at its zero initialisation (a variance of 1 at every t).
  _require(not (f.loss == 'mse' and f.var_type in ('learned', 'learned_range')),
           'diffusion.loss', f.loss, f"'kl' or 'hybrid' with config.diffusion.var_type="
           f"{f.var_type!r} (L_simple does not train the variance), or a fixed var_type "
           "('fixedlarge' or 'fixedsmall') with 'mse'")
  _require(f.num_timesteps >= 1, 'diffusion.num_timesteps', f.num_timesteps, 'an integer >= 1')
  _require(0.0 < f.beta_start <= f.beta_end < 1.0, 'diffusion.beta_start/beta_end',
           (f.beta_start, f.beta_end), '0 < beta_start <= beta_end < 1')
  _require(o.lr > 0, 'optim.lr', o.lr, 'a positive learning rate')
  _require(o.warmup_steps >= 0, 'optim.warmup_steps', o.warmup_steps, 'an integer >= 0')
  _require(o.grad_clip >= 0, 'optim.grad_clip', o.grad_clip, '>= 0 (0 disables clipping)')
  _require(0.0 <= o.ema_decay < 1.0, 'optim.ema_decay', o.ema_decay, 'a decay in [0, 1)')
  _require(isinstance(o.ema_warmup, bool), 'optim.ema_warmup', o.ema_warmup, 'True or False')
  _require(t.batch_size >= 1, 'train.batch_size', t.batch_size, 'a positive integer')
  _require(t.num_steps >= 0, 'train.num_steps', t.num_steps, 'an integer >= 0')
  _require(t.log_every >= 1, 'train.log_every', t.log_every, 'an integer >= 1')
  _require(t.checkpoint_every >= 1, 'train.checkpoint_every', t.checkpoint_every,
           'an integer >= 1')
  _require(t.keep_checkpoints >= 1, 'train.keep_checkpoints', t.keep_checkpoints,
           'an integer >= 1 (the newest checkpoints kept)')
  _require(t.sample_every >= 0, 'train.sample_every', t.sample_every, '>= 0 (0 disables)')
  _require(t.sample_every == 0 or t.num_sample_grid >= 1, 'train.num_sample_grid',
           t.num_sample_grid, f'a positive integer while config.train.sample_every='
           f'{t.sample_every} (or set that to 0 for no sample grids)')
  for key, seed in (('train.seed', t.seed), ('sample.seed', s.seed),
                    ('eval.seed', config.get('eval', {}).get('seed', 0))):
    _require(0 <= seed < SEED_RANGE, key, seed, 'an integer in [0, 2**32)')
  _require(s.num >= 1, 'sample.num', s.num, 'a positive integer')
  _require(s.batch_size >= 1, 'sample.batch_size', s.batch_size, 'a positive integer')
  _validate_objective_and_sampler(config)
  _validate_editing(config)
  _validate_parallelism(config)


def _validate_objective_and_sampler(config) -> None:
  """The fields of issue 5 (objectives, class conditioning, samplers); `.get` so that configs
  saved before they existed still validate."""
  f, s, t = config.diffusion, config.sample, config.train
  num_classes = config.model.get('num_classes', 0)
  _require(num_classes >= 0, 'model.num_classes', num_classes, 'an integer >= 0 (0 = none)')
  _require(f.get('hybrid_lambda', 0.001) >= 0, 'diffusion.hybrid_lambda',
           f.get('hybrid_lambda'), '>= 0')
  gamma = f.get('min_snr_gamma', 0.0)
  _require(gamma >= 0, 'diffusion.min_snr_gamma', gamma, '>= 0 (0 disables the weighting)')
  _require(gamma == 0 or f.loss in ('mse', 'hybrid'), 'diffusion.min_snr_gamma', gamma,
           "0 unless config.diffusion.loss is 'mse' or 'hybrid' (it weights the MSE term)")
  _require(gamma == 0 or f.mean_type in ('eps', 'x0', 'v'), 'diffusion.min_snr_gamma', gamma,
           "0 for mean_type 'mu' (min-SNR weighting is defined for eps, x0 and v targets)")
  _require(not f.get('importance_sampling', False) or f.loss == 'kl',
           'diffusion.importance_sampling', f.get('importance_sampling'),
           "False unless config.diffusion.loss='kl' (it samples t for L_vlb)")
  _require(0.0 <= t.get('label_dropout', 0.0) < 1.0, 'train.label_dropout',
           t.get('label_dropout'), 'a rate in [0, 1)')
  if 'sampler' in s:
    _choice(config, 'sample.sampler', samplers.SAMPLERS)
  if 'mode' in s:
    _choice(config, 'sample.mode', SAMPLE_MODES)
  steps = s.get('steps', 0)
  _require(0 <= steps <= f.num_timesteps, 'sample.steps', steps,
           f'an integer in [0, config.diffusion.num_timesteps={f.num_timesteps}] (0 = all)')
  _require(s.get('eta', 0.0) >= 0, 'sample.eta', s.get('eta'), '>= 0 (0 = deterministic DDIM)')
  _require(s.get('guidance_scale', 0.0) == 0 or num_classes > 0, 'sample.guidance_scale',
           s.get('guidance_scale'), '0 for an unconditional model (config.model.num_classes=0)')
  label = s.get('label', -1)
  _require(-1 <= label < max(num_classes, 1), 'sample.label', label,
           f'-1 (every class in turn) or a class in [0, config.model.num_classes={num_classes})')
  _require(s.get('progressive_frames', 10) >= 1, 'sample.progressive_frames',
           s.get('progressive_frames'), 'a positive integer')
  if s.get('mode', 'grid') == 'interpolate':
    _require(0 <= s.interp_t < f.num_timesteps, 'sample.interp_t', s.interp_t,
             f'a timestep in [0, config.diffusion.num_timesteps={f.num_timesteps})')
  _require(s.get('interp_lambdas', 2) >= 2, 'sample.interp_lambdas', s.get('interp_lambdas'),
           'an integer >= 2')


SAMPLE_MODES = ('grid', 'progressive', 'interpolate', 'reconstruct', 'inpaint', 'colorize',
                'edit')


def _validate_editing(config) -> None:
  """The editing modes' fields (inpaint, colorize, edit); `.get` so that configs saved before
  they existed still validate. Masks and input files are checked when they are read."""
  s, num_timesteps = config.sample, config.diffusion.num_timesteps
  mode = s.get('mode', 'grid')
  if mode == 'edit':
    _require(1 <= s.t0 <= num_timesteps, 'sample.t0', s.t0,
             f'a step in [1, config.diffusion.num_timesteps={num_timesteps}]')
  if mode == 'colorize':
    _require(config.data.channels == 3, 'sample.mode', mode,
             'a colour model (config.data.channels=3) for colorize: this model has '
             f'{config.data.channels} channel and no colours to generate')
  _require(s.get('resample', 1) >= 1, 'sample.resample', s.get('resample'),
           'an integer >= 1 (1 = no RePaint resampling)')
  _require(s.get('jump_length', 1) >= 1, 'sample.jump_length', s.get('jump_length'),
           'an integer >= 1')
  _require(mode != 'inpaint' or bool(str(s.get('mask', 'center')).strip()), 'sample.mask',
           s.get('mask'), 'center, left, strokes, or a mask PNG or folder of them')


def _validate_parallelism(config) -> None:
  """The fields of issue 4 (mesh, gradient accumulation, preemption checkpoints, remat); `.get`
  so that configs saved before they existed still validate. The mesh is checked against the
  device count by `ddpm_jax.sharding.resolve_mesh_shape`."""
  t = config.train
  mesh_shape = tuple(t.get('mesh_shape', (-1, 1)))
  _require(len(mesh_shape) in (1, 2) and mesh_shape.count(-1) <= 1
           and all(isinstance(n, int) and (n >= 1 or n == -1) for n in mesh_shape),
           'train.mesh_shape', mesh_shape,
           '(data, fsdp) sizes: positive integers, one of which may be -1 ("the rest")')
  accum = t.get('grad_accum_steps', 1)
  _require(accum >= 1, 'train.grad_accum_steps', accum, 'an integer >= 1')
  _require(t.batch_size % accum == 0, 'train.grad_accum_steps', accum,
           f'a divisor of config.train.batch_size={t.batch_size}')
  _require(t.get('preemption_every', 0) >= 0, 'train.preemption_every',
           t.get('preemption_every'), '>= 0 (0 disables the preemption checkpoint stream)')
  _require(isinstance(config.model.get('remat', False), bool), 'model.remat',
           config.model.get('remat'), 'True or False')
  k = t.get('steps_per_dispatch', 1)
  _require(isinstance(k, int) and k >= 1, 'train.steps_per_dispatch', k, 'an integer >= 1')
  # float16 would need loss scaling: the output convolution's gradients (~5e-6 at batch 128)
  # are subnormal in float16. bfloat16 has float32's exponent range and needs none.
  _require(t.get('compute_dtype', 'float32') in ('float32', 'bfloat16'),
           'train.compute_dtype', t.get('compute_dtype'),
           "'float32' or 'bfloat16' (float16 is not supported: it would need loss scaling; "
           "bfloat16 has float32's range and halves the memory and compute the same way)")
