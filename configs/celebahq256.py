"""CelebA-HQ 256x256, the paper's 256x256 model (about 114M parameters): ch 128,
ch_mult (1, 1, 2, 2, 4, 4), attention at 16x16, no dropout, batch 64, lr 2e-5, 0.5M steps,
fixedsmall variance (the paper's LSUN/CelebA-HQ code samples with the posterior variance)."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'celeb_a_hq'
  config.data.image_size = 256
  config.data.channels = 3
  config.model.ch = 128
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0
  config.diffusion.var_type = 'fixedsmall'
  config.optim.lr = 2e-5
  config.train.batch_size = 64
  config.train.num_steps = 500_000
  config.train.sample_every = 50_000
  config.train.num_sample_grid = 16
  config.sample.batch_size = 16
  return config
