"""CIFAR-10 32x32, the paper's setup (Ho et al. 2020, Sec. 4 and App. B): 35.7M parameters,
batch 128, lr 2e-4 with 5000 warm-up steps, dropout 0.1, random flips, EMA 0.9999, 800k steps,
fixedlarge variance for sampling."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'cifar10'
  config.data.image_size = 32
  config.data.channels = 3
  config.model.ch = 128
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1
  config.diffusion.var_type = 'fixedlarge'
  config.train.batch_size = 128
  config.train.num_steps = 800_000
  return config
