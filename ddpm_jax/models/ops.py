"""The few functions a platform may compute the U-Net with, handed to it as one value.

The network is written with stock Flax layers. `Ops` names the functions inside them that a
backend may replace without changing the parameters or the function (`ddpm_jax.kernels`
builds the backends and picks one per run from `config.model.kernels`):

* `conv_general_dilated`: what every `nn.Conv` computes with (`lax.conv_general_dilated`'s
  signature);
* `dot_general`: what every `nn.Dense` computes with (`lax.dot_general`'s signature);
* `upsample_conv`: what the upsampling `nn.Conv` computes with when it is applied to the
  low-resolution image: the convolution of its nearest-neighbour x2 upsampling;
* `dot_product_attention`: the attention (`jax.nn.dot_product_attention`'s signature);
* `group_norm`: GroupNorm followed by swish and dropout as one function,
  `group_norm(x, scale, bias, num_groups, epsilon, swish, dropout_rate, dropout_key)`, with
  `nn.GroupNorm`'s parameters and `nn.Dropout`'s mask.

`None` means the stock computation (`lax`, upsampling then `nn.Conv`,
`jax.nn.dot_product_attention`, `nn.GroupNorm` -> `nn.swish` -> `nn.Dropout`), so
`XLA = Ops()` is plain JAX on every platform.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class Ops:
  name: str = 'xla'
  conv_general_dilated: Optional[Callable] = None
  dot_general: Optional[Callable] = None
  upsample_conv: Optional[Callable] = None
  dot_product_attention: Optional[Callable] = None
  group_norm: Optional[Callable] = None


XLA = Ops()
