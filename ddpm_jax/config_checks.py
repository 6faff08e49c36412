"""Checks a config's values before anything is built, with errors that name the config key.

Unknown keys and wrongly typed values are already refused by ml_collections (locked configs,
typed overrides); this module checks the values themselves, the dataset name and the network's
shapes, once, before anything is built: the model, the input pipeline and the samplers assume a
validated config. The data files are checked by the input pipeline when it opens them.
"""

from __future__ import annotations

from configs import default
from ddpm_jax import data, diffusion, kernels, objectives, reverse_chains, schedules
from ddpm_jax.errors import ConfigError

SEED_RANGE = 2 ** 32  # Seeds feed NumPy's generators too, which take [0, 2**32).


def _require(ok: bool, key: str, value, expect: str) -> None:
  if not ok:
    raise ConfigError(f'config.{key}={value!r} is invalid: expected {expect}.')


def _int_tuple(value) -> bool:
  return isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)


def _at_least(key: str, value, minimum, note: str = '') -> None:
  expect = f'>= {minimum}' if isinstance(value, float) else f'an integer >= {minimum}'
  _require(value >= minimum, key, value, expect + (f' ({note})' if note else ''))


# The smallest value of each numeric field, with what that value means where it is special.
_MINIMA = {
    'data.image_size': 4, 'data.worker_processes': 0, 'diffusion.num_timesteps': 1,
    'diffusion.hybrid_lambda': 0, 'diffusion.min_snr_gamma': (0, '0 disables the weighting'),
    'model.ch': (4, 'it is also the timestep-embedding width'), 'model.num_res_blocks': 1,
    'model.num_groups': 1, 'model.num_classes': (0, '0 = none'), 'optim.warmup_steps': 0,
    'optim.grad_clip': (0, '0 disables clipping'), 'train.batch_size': 1, 'train.num_steps': 0,
    'train.log_every': 1, 'train.checkpoint_every': 1,
    'train.keep_checkpoints': (1, 'the newest checkpoints kept'),
    'train.sample_every': (0, '0 disables'), 'train.grad_accum_steps': 1,
    'train.preemption_every': (0, '0 disables the preemption checkpoint stream'),
    'sample.num': 1, 'sample.batch_size': 1, 'sample.eta': (0, '0 = deterministic DDIM'),
    'sample.progressive_frames': 1, 'sample.interp_lambdas': 2,
    'sample.resample': (1, '1 = no RePaint resampling'), 'sample.jump_length': 1,
    'eval.poll_seconds': 0}


def _choice(config, key: str, choices) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  _require(value in choices, key, value, 'one of ' + ', '.join(map(repr, choices)))


def validate(config) -> None:
  """Raises ValueError naming the first invalid field of `config`."""
  d, f, o, t, s = config.data, config.diffusion, config.optim, config.train, config.sample
  try:
    data.resolve_dataset(d.dataset, d.image_size)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for key, spec in _MINIMA.items():
    _at_least(key, config[key], *(spec if isinstance(spec, tuple) else (spec,)))
  _require(d.channels in (1, 3), 'data.channels', d.channels, '1 or 3')
  _validate_model(config)
  _choice(config, 'diffusion.schedule', schedules.SCHEDULE_NAMES)
  _choice(config, 'diffusion.mean_type', diffusion.MEAN_TYPES)
  _choice(config, 'diffusion.var_type', diffusion.VAR_TYPES)
  _choice(config, 'diffusion.loss', objectives.LOSS_TYPES)
  # The paper's code asserts against this pair: L_simple has no gradient for the variance
  # output, which then stays at its zero initialisation (a variance of 1 at every t).
  _require(not (f.loss == 'mse' and f.var_type in ('learned', 'learned_range')),
           'diffusion.loss', f.loss, f"'kl' or 'hybrid' with config.diffusion.var_type="
           f"{f.var_type!r} (L_simple does not train the variance), or a fixed var_type "
           "('fixedlarge' or 'fixedsmall') with 'mse'")
  _require(0.0 < f.beta_start <= f.beta_end < 1.0, 'diffusion.beta_start/beta_end',
           (f.beta_start, f.beta_end), '0 < beta_start <= beta_end < 1')
  _require(o.lr > 0, 'optim.lr', o.lr, 'a positive learning rate')
  _require(0.0 <= o.ema_decay < 1.0, 'optim.ema_decay', o.ema_decay, 'a decay in [0, 1)')
  _require(isinstance(o.ema_warmup, bool), 'optim.ema_warmup', o.ema_warmup, 'True or False')
  _require(t.sample_every == 0 or t.num_sample_grid >= 1, 'train.num_sample_grid',
           t.num_sample_grid, f'a positive integer while config.train.sample_every='
           f'{t.sample_every} (or set that to 0 for no sample grids)')
  for key, seed in (('train.seed', t.seed), ('sample.seed', s.seed),
                    ('eval.seed', config.eval.seed)):
    _require(0 <= seed < SEED_RANGE, key, seed, 'an integer in [0, 2**32)')
  _validate_objective_and_sampler(config)
  _validate_editing(config)
  _validate_parallelism(config)
  _validate_evals(config)


def _validate_model(config) -> None:
  """The U-Net's fields, and its shapes against `config.data.image_size`."""
  m, size = config.model, config.data.image_size
  _require(_int_tuple(m.ch_mult) and len(m.ch_mult) >= 1 and all(c >= 1 for c in m.ch_mult),
           'model.ch_mult', m.ch_mult, 'a non-empty tuple of positive integers')
  _require(_int_tuple(m.attn_resolutions), 'model.attn_resolutions', m.attn_resolutions,
           'a tuple of resolutions, e.g. (16,)')
  _require(0.0 <= m.dropout < 1.0, 'model.dropout', m.dropout, 'a rate in [0, 1)')
  factor = 2 ** (len(m.ch_mult) - 1)
  _require(size % factor == 0, 'data.image_size', size,
           f'a multiple of 2**(len(config.model.ch_mult)-1) = {factor} (each of the '
           f'{len(m.ch_mult) - 1} downsamplings halves it; ch_mult={tuple(m.ch_mult)})')
  widths = sorted({m.ch} | {m.ch * c for c in m.ch_mult})
  _require(all(w % m.num_groups == 0 for w in widths), 'model.num_groups', m.num_groups,
           f'a divisor of every channel count of the network (config.model.ch and ch * ch_mult: '
           f'{widths}), since GroupNorm splits the channels into num_groups groups')
  resolutions = [size // 2 ** i for i in range(len(m.ch_mult))]
  bad = [r for r in m.attn_resolutions if r not in resolutions]
  _require(not bad, 'model.attn_resolutions', tuple(m.attn_resolutions),
           f'resolutions the network has, {resolutions} (config.data.image_size={size}, '
           f'len(config.model.ch_mult)={len(m.ch_mult)}); it never has {bad}')
  _choice(config, 'model.kernels', kernels.KERNELS)
  _require(isinstance(m.remat, bool), 'model.remat', m.remat, 'True or False')


def _validate_objective_and_sampler(config) -> None:
  """Objectives, class conditioning and samplers."""
  f, s, t = config.diffusion, config.sample, config.train
  num_classes = config.model.num_classes
  gamma = f.min_snr_gamma
  _require(gamma == 0 or f.loss in ('mse', 'hybrid'), 'diffusion.min_snr_gamma', gamma,
           "0 unless config.diffusion.loss is 'mse' or 'hybrid' (it weights the MSE term)")
  _require(gamma == 0 or f.mean_type in ('eps', 'x0', 'v'), 'diffusion.min_snr_gamma', gamma,
           "0 for mean_type 'mu' (min-SNR weighting is defined for eps, x0 and v targets)")
  _require(not f.importance_sampling or f.loss == 'kl', 'diffusion.importance_sampling',
           f.importance_sampling,
           "False unless config.diffusion.loss='kl' (it samples t for L_vlb)")
  _require(0.0 <= t.label_dropout < 1.0, 'train.label_dropout', t.label_dropout,
           'a rate in [0, 1)')
  _choice(config, 'sample.sampler', reverse_chains.SAMPLERS)
  _choice(config, 'sample.mode', SAMPLE_MODES)
  _require(0 <= s.steps <= f.num_timesteps, 'sample.steps', s.steps,
           f'an integer in [0, config.diffusion.num_timesteps={f.num_timesteps}] (0 = all)')
  _require(s.guidance_scale == 0 or num_classes > 0, 'sample.guidance_scale', s.guidance_scale,
           '0 for an unconditional model (config.model.num_classes=0)')
  _require(-1 <= s.label < max(num_classes, 1), 'sample.label', s.label,
           f'-1 (every class in turn) or a class in [0, config.model.num_classes={num_classes})')
  if s.mode == 'interpolate':
    _require(0 <= s.interp_t < f.num_timesteps, 'sample.interp_t', s.interp_t,
             f'a timestep in [0, config.diffusion.num_timesteps={f.num_timesteps})')


SAMPLE_MODES = ('grid', 'progressive', 'interpolate', 'reconstruct', 'inpaint', 'colorize',
                'edit')


def _validate_editing(config) -> None:
  """The editing modes' fields (inpaint, colorize, edit). Masks and input files are checked
  when they are read."""
  s, num_timesteps = config.sample, config.diffusion.num_timesteps
  mode = s.mode
  if mode == 'edit':
    _require(1 <= s.t0 <= num_timesteps, 'sample.t0', s.t0,
             f'a step in [1, config.diffusion.num_timesteps={num_timesteps}]')
  if mode == 'colorize':
    _require(config.data.channels == 3, 'sample.mode', mode,
             'a colour model (config.data.channels=3) for colorize: this model has '
             f'{config.data.channels} channel and no colours to generate')
  _require(mode != 'inpaint' or bool(str(s.mask).strip()), 'sample.mask', s.mask,
           'center, left, strokes, or a mask PNG or folder of them')


def _validate_parallelism(config) -> None:
  """Mesh, gradient accumulation, preemption checkpoints, dispatch and precision. The mesh is
  checked against the device count by `ddpm_jax.sharding.resolve_mesh_shape`."""
  t = config.train
  mesh_shape = tuple(t.mesh_shape)
  _require(len(mesh_shape) in (1, 2) and mesh_shape.count(-1) <= 1
           and all(isinstance(n, int) and (n >= 1 or n == -1) for n in mesh_shape),
           'train.mesh_shape', mesh_shape,
           '(data, fsdp) sizes: positive integers, one of which may be -1 ("the rest")')
  _require(not t.exact_reduction or mesh_shape[1:] in ((), (1,)), 'train.exact_reduction',
           t.exact_reduction, "False unless config.train.mesh_shape=(-1, 1) (it sums replicated "
           "parameters' gradients; no 'fsdp' axis)")
  accum = t.grad_accum_steps
  _require(t.batch_size % accum == 0, 'train.grad_accum_steps', accum,
           f'a divisor of config.train.batch_size={t.batch_size}')
  k = t.steps_per_dispatch
  _require(isinstance(k, int) and k >= 1, 'train.steps_per_dispatch', k, 'an integer >= 1')
  # float16 would need loss scaling: the output convolution's gradients (~5e-6 at batch 128)
  # are subnormal in float16. bfloat16 has float32's exponent range and needs none.
  _require(t.compute_dtype in ('float32', 'bfloat16'), 'train.compute_dtype', t.compute_dtype,
           "'float32' or 'bfloat16' (float16 is not supported: it would need loss scaling; "
           "bfloat16 has float32's range and halves the memory and compute the same way)")


# The smallest value of each numeric field (a size of 0 turns the evaluator off; statistics of
# a reference need two images).
_EVALUATOR_MINIMA = {'every': 0, 'train_examples': 0, 'num_examples': 0, 'train_samples': 0,
                     'num_samples': 0, 'batch_size': 1, 'is_splits': 1, 'reference_examples': 2}


def _validate_evals(config) -> None:
  """`config.evals`: known types, one evaluator per type, each with the fields of its type's
  evaluator in `configs/default.py`."""
  types = {spec.type: set(spec) - {'type'} for spec in default.get_config().evals.values()}
  seen = {}
  for name, spec in config.evals.items():
    key = f'evals.{name}'
    kind = spec.get('type') if hasattr(spec, 'get') else None
    _require(kind in types, f'{key}.type', kind, 'one of ' + ', '.join(map(repr, types)))
    _require(kind not in seen, f'{key}.type', kind, f'a type no other evaluator has (config.'
             f'evals.{seen.get(kind)} has it; their results would share eval_results.csv\'s '
             'columns)')
    seen[kind] = name
    fields = set(spec) - {'type'}
    _require(fields == types[kind], key, sorted(fields),
             f'the fields of type {kind!r}: {", ".join(sorted(types[kind]))}')
    for field in sorted(fields & set(_EVALUATOR_MINIMA)):
      _at_least(f'{key}.{field}', spec[field], _EVALUATOR_MINIMA[field])
