"""Checks a config's values before anything is built, with errors that name the config key.

Unknown keys and wrongly typed values are already refused by ml_collections (locked configs,
typed overrides); this module checks the values themselves. Model shapes are checked by
`ddpm_jax.models.create_model`, dataset names by the input pipeline.
"""

from __future__ import annotations

from ddpm_jax import diffusion, schedules


def _require(ok: bool, key: str, value, expect: str) -> None:
  if not ok:
    raise ValueError(f'config.{key}={value!r} is invalid: expected {expect}.')


def _choice(config, key: str, choices) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  _require(value in choices, key, value, 'one of ' + ', '.join(map(repr, choices)))


def validate(config) -> None:
  """Raises ValueError naming the first invalid field of `config`."""
  d, m, f, o, t, s = (config.data, config.model, config.diffusion, config.optim, config.train,
                      config.sample)
  _require(d.image_size >= 4, 'data.image_size', d.image_size, 'an integer >= 4')
  _require(d.channels in (1, 3), 'data.channels', d.channels, '1 or 3')
  _require(m.ch >= 1, 'model.ch', m.ch, 'a positive integer')
  _require(len(m.ch_mult) >= 1 and all(c >= 1 for c in m.ch_mult), 'model.ch_mult', m.ch_mult,
           'a non-empty tuple of positive integers')
  _require(m.num_res_blocks >= 1, 'model.num_res_blocks', m.num_res_blocks, 'an integer >= 1')
  _require(0.0 <= m.dropout < 1.0, 'model.dropout', m.dropout, 'a rate in [0, 1)')
  _choice(config, 'diffusion.schedule', schedules.SCHEDULE_NAMES)
  _choice(config, 'diffusion.mean_type', diffusion.MEAN_TYPES)
  _choice(config, 'diffusion.var_type', diffusion.VAR_TYPES)
  _choice(config, 'diffusion.loss', diffusion.LOSS_TYPES)
  _require(f.num_timesteps >= 1, 'diffusion.num_timesteps', f.num_timesteps, 'an integer >= 1')
  _require(0.0 < f.beta_start <= f.beta_end < 1.0, 'diffusion.beta_start/beta_end',
           (f.beta_start, f.beta_end), '0 < beta_start <= beta_end < 1')
  _require(o.lr > 0, 'optim.lr', o.lr, 'a positive learning rate')
  _require(o.warmup_steps >= 0, 'optim.warmup_steps', o.warmup_steps, 'an integer >= 0')
  _require(o.grad_clip >= 0, 'optim.grad_clip', o.grad_clip, '>= 0 (0 disables clipping)')
  _require(0.0 <= o.ema_decay < 1.0, 'optim.ema_decay', o.ema_decay, 'a decay in [0, 1)')
  _require(t.batch_size >= 1, 'train.batch_size', t.batch_size, 'a positive integer')
  _require(t.num_steps >= 0, 'train.num_steps', t.num_steps, 'an integer >= 0')
  _require(t.log_every >= 1, 'train.log_every', t.log_every, 'an integer >= 1')
  _require(t.checkpoint_every >= 1, 'train.checkpoint_every', t.checkpoint_every,
           'an integer >= 1')
  _require(t.sample_every >= 0, 'train.sample_every', t.sample_every, '>= 0 (0 disables)')
  _require(s.num >= 1, 'sample.num', s.num, 'a positive integer')
  _require(s.batch_size >= 1, 'sample.batch_size', s.batch_size, 'a positive integer')
