"""LSUN Cat 256x256: the paper's 256x256 model and optimiser (as `celebahq256.py`), trained
1.8M steps (Ho et al. 2020, App. B) without random flips (the paper's `run_lsun.py` command for
cat passes `--randflip 0`); the config of `google/ddpm-cat-256` and `google/ddpm-ema-cat-256`."""

from configs import celebahq256


def get_config():
  config = celebahq256.get_config()
  config.data.dataset = 'lsun/cat'
  config.data.random_flip = False
  config.train.num_steps = 1_800_000
  return config
