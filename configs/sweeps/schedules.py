"""Noise schedules x number of diffusion steps T: linear (the paper's), cosine (Nichol &
Dhariwal 2021) and quadratic, each at T = 500, 1000 and 2000 (nine runs).

    python -m ddpm_jax.sweep --config=configs/cifar10.py \
        --sweep=configs/sweeps/schedules.py --workdir=runs/schedules
"""

from ddpm_jax.sweep.spec import product


def get_sweep():
  return product({'diffusion.schedule': ['linear', 'cosine', 'quadratic'],
                  'diffusion.num_timesteps': [500, 1000, 2000]})
