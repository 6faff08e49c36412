"""Fashion-MNIST padded to 32x32: the quickstart. A small U-Net (1,112,801 parameters) that
trains visibly in about five minutes on 2 CPU cores and ends with an 8x8 grid of samples.

The diffusion itself is the paper's (linear schedule, T = 1000, L_simple); only the network,
the optimiser's pace (higher lr, short warm-up, a fast EMA with warm-up) and the run length are
scaled down. The recipe was chosen by FD-FMNIST at equal training time among learning rates,
batch sizes and EMA warm-up (README, "Results"). The grid is drawn with the paper's ancestral
sampler respaced to 250 steps, a quarter of the time of all 1000.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'fashion_mnist'
  config.data.image_size = 32
  config.data.channels = 1
  config.data.random_flip = True
  config.model.ch = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (8,)
  config.model.num_groups = 8
  config.model.dropout = 0.0
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.ema_decay = 0.995
  config.optim.ema_warmup = True
  config.train.batch_size = 32
  config.train.num_steps = 600
  config.train.log_every = 50
  config.train.sample_every = 600
  config.train.checkpoint_every = 200
  config.train.num_sample_grid = 64
  config.sample.num = 64
  config.sample.batch_size = 64
  config.sample.steps = 250
  return config
