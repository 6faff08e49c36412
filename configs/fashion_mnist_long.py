"""The quickstart's network trained ten times longer (6,000 steps, about an hour on 2 CPU cores
with its evaluations): how far the recipe goes, with training-time curves.

Every 1,500 steps: bits/dim (full T = 1000 bound) on the first 32 test images, and FD-FMNIST of
1,000 EMA samples from 50 DDIM steps; a 64-sample grid at the same steps. The network and the
diffusion are the quickstart's; the EMA is slower (0.999) and warmed up.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.optim.ema_decay = 0.999
  config.optim.ema_warmup = True
  config.train.num_steps = 6_000
  config.train.log_every = 50
  config.train.checkpoint_every = 1_500
  config.train.keep_checkpoints = 5
  config.train.sample_every = 1_500
  config.train.num_sample_grid = 64
  config.evals.bpd.update(every=1_500, train_examples=32, batch_size=32)
  config.evals.fd_fmnist.update(every=1_500, train_samples=1_000)
  config.sample.sampler = 'ddim'
  config.sample.steps = 50
  config.sample.num = 64
  config.sample.batch_size = 250
  return config
