"""Oxford Flowers 102 at 64x64, the setup of the Keras DDPM example: widths 64 * (1, 2, 4, 8),
attention in the last two levels (16x16 and 8x8), GroupNorm with 8 groups, batch 32, EMA 0.999."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'oxford_flowers102'
  config.data.image_size = 64
  config.data.channels = 3
  config.model.ch = 64
  config.model.ch_mult = (1, 2, 4, 8)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16, 8)
  config.model.num_groups = 8
  config.model.dropout = 0.0
  config.optim.ema_decay = 0.999
  config.optim.warmup_steps = 1000
  config.train.batch_size = 32
  config.train.num_steps = 100_000
  config.train.sample_every = 5_000
  config.train.checkpoint_every = 2_500
  config.train.num_sample_grid = 32
  config.sample.batch_size = 32
  return config
