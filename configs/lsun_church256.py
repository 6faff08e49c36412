"""LSUN Church 256x256: the paper's 256x256 model and optimiser (as `celebahq256.py`),
trained 1.2M steps."""

from configs import celebahq256


def get_config():
  config = celebahq256.get_config()
  config.data.dataset = 'lsun/church'
  config.train.num_steps = 1_200_000
  return config
