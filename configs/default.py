"""Base configuration shared by every ddpm-jax config.

Every other file in `configs/` imports `get_config()` from here and overrides a few fields.
Field names are a public interface: external tools read `config.data.*`, `config.model.*`,
`config.diffusion.*`, `config.optim.*`, `config.train.*` and `config.sample.*`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Input pipeline.
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'cifar10'  # cifar10 | oxford_flowers102 | celeb_a_hq | celeb_a | lsun/church
  #                           | fashion_mnist | folder
  data.image_size = 32
  data.channels = 3
  data.random_flip = True
  data.data_dir = ''  # tfds data_dir, the folder of images for `folder`, or Fashion-MNIST IDX files.
  data.split = 'train'

  # U-Net (Ho et al. 2020, appendix B).
  config.model = model = ml_collections.ConfigDict()
  model.ch = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.num_groups = 32
  model.resamp_with_conv = True

  # Forward process and objective.
  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'linear'  # linear | quadratic | cosine | const
  diffusion.num_timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  diffusion.mean_type = 'eps'  # eps | x0
  diffusion.var_type = 'fixedlarge'  # fixedlarge | fixedsmall
  diffusion.loss = 'mse'  # mse (L_simple, eq. 14)

  # Optimiser.
  config.optim = optim = ml_collections.ConfigDict()
  optim.lr = 2e-4
  optim.warmup_steps = 5000
  optim.grad_clip = 1.0
  optim.ema_decay = 0.9999
  optim.adam_eps = 1e-8
  optim.adam_b1 = 0.9
  optim.adam_b2 = 0.999

  # Training loop.
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128  # Global batch, across every device and process.
  train.num_steps = 800_000
  train.log_every = 100
  train.sample_every = 10_000
  train.checkpoint_every = 5_000
  train.keep_checkpoints = 3
  train.seed = 0
  train.num_sample_grid = 64  # Images in each training-time sample grid.

  # Sampling (`--mode=sample`).
  config.sample = sample = ml_collections.ConfigDict()
  sample.num = 64
  sample.batch_size = 64
  sample.clip_denoised = True
  sample.seed = 0
  sample.use_ema = True

  return config
