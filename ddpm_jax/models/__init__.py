"""Models: the DDPM U-Net in stock Flax, and the functions it computes with (`ops`)."""

import math

import jax

from ddpm_jax.models.layers import (AttnBlock, Downsample, ResnetBlock, Upsample,
                                    timestep_embedding)
from ddpm_jax.models.ops import XLA, Ops
from ddpm_jax.models.unet import UNet, create_model

__all__ = ['UNet', 'create_model', 'count_params', 'timestep_embedding', 'ResnetBlock',
           'AttnBlock', 'Downsample', 'Upsample', 'Ops', 'XLA']


def count_params(params) -> int:
  """Total number of scalars in a pytree of arrays (or `jax.ShapeDtypeStruct`s)."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
