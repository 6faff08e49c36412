"""LSUN Bedroom 256x256: the paper's 256x256 model and optimiser (as `celebahq256.py`), trained
2.4M steps (Ho et al. 2020, App. B); the config of `google/ddpm-bedroom-256` and
`google/ddpm-ema-bedroom-256`."""

from configs import celebahq256


def get_config():
  config = celebahq256.get_config()
  config.data.dataset = 'lsun/bedroom'
  config.train.num_steps = 2_400_000
  return config
