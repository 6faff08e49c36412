"""The DDPM U-Net (Ho et al. 2020, appendix B; `diffusion_tf/models/unet.py`).

A PixelCNN++-style Wide-ResNet U-Net:

  temb = Dense(4ch)(swish(Dense(4ch)(timestep_embedding(t, ch))))
  h = conv_in(x)                                   # 3x3 -> ch
  down: for each level i (resolution r = image_size / 2**i):
          num_res_blocks x [ResnetBlock(ch * ch_mult[i]) (+ AttnBlock if r in attn_resolutions)]
          Downsample on every level but the last
        every intermediate output (conv_in, blocks, downsamples) is kept as a skip
  mid:  ResnetBlock, AttnBlock, ResnetBlock
  up:   for each level i in reverse:
          (num_res_blocks + 1) x [ResnetBlock(ch * ch_mult[i]) on concat(h, skip)
                                  (+ AttnBlock if r in attn_resolutions)]
          Upsample on every level but level 0
  out:  GroupNorm -> swish -> conv_out (3x3 -> out_ch, zero-initialised)

Class-conditional models (`num_classes > 0`) add a learned label embedding (`label_emb`,
num_classes + 1 rows, the last one the "null" label of classifier-free guidance) to temb.

Parameter names follow the TF code (`temb_dense0`, `conv_in`, `down_0_block_1`,
`down_2_attn_0`, `down_0_downsample`, `mid_block_1`, `mid_attn_1`, `up_3_block_2`,
`up_1_upsample`, `norm_out`, `conv_out`, ...).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ddpm_jax.models.layers import (AttnBlock, Downsample, Dtype, Normalize, ResnetBlock,
                                    Upsample, conv3x3, dense, timestep_embedding)
from ddpm_jax.models.ops import XLA, Ops

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class UNet(nn.Module):
  """The DDPM noise-prediction network eps_theta(x_t, t) (module docstring).

  Attributes:
    ch: base channel count (also the timestep-embedding width; temb MLP width is 4*ch).
    out_ch: output channels (data channels; doubled if the variance is learned).
    ch_mult: channel multiplier per resolution level.
    num_res_blocks: ResnetBlocks per level on the down path (the up path has one more).
    attn_resolutions: spatial resolutions (height) at which self-attention is applied.
    dropout: dropout rate inside the ResnetBlocks (active only with `train=True`).
    num_groups: GroupNorm groups.
    resamp_with_conv: use convolutions in Downsample/Upsample (else avg-pool / plain nearest).
    dtype: compute dtype. Parameters are float32; the output is float32.
    remat: rematerialise every ResnetBlock and AttnBlock (`nn.remat`): less activation
      memory for about one more forward pass of compute; same parameters and results.
    num_classes: 0 for an unconditional model, else the number of labels (module docstring).
    ops: the functions the layers compute with (`ddpm_jax.models.ops`).
  """
  ch: int = 128
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_groups: int = 32
  resamp_with_conv: bool = True
  dtype: Dtype = jnp.float32
  num_classes: int = 0
  remat: bool = False
  ops: Ops = XLA

  @nn.compact
  def __call__(self, x, t, label=None, *, train: bool = False):
    """Predict eps from x (B, H, W, C) float in [-1, 1] and integer timesteps t (B,).

    `label` (B,) int: class labels of a conditional model (`num_classes` = the null label;
    None = all null). Must be None for an unconditional model.
    """
    B, H, W, _ = x.shape
    num_levels = len(self.ch_mult)
    factor = 2 ** (num_levels - 1)
    if H % factor or W % factor:
      raise ValueError(f'UNet input of size {H}x{W} is not divisible by 2**(len(ch_mult)-1) '
                       f'= {factor}.')
    t = jnp.broadcast_to(jnp.asarray(t), (B,))
    dtype, ops = self.dtype, self.ops
    block_kwargs = dict(num_groups=self.num_groups, dropout=self.dropout, dtype=dtype, ops=ops)
    # remat: keep only each block's inputs for the backward pass and recompute the rest.
    # Parameter names are unchanged, so checkpoints load with either setting.
    resnet_block = nn.remat(ResnetBlock, static_argnums=(3,)) if self.remat else ResnetBlock
    attn_block = nn.remat(AttnBlock) if self.remat else AttnBlock

    # Timestep embedding.
    temb = timestep_embedding(t, self.ch)
    temb = dense(4 * self.ch, dtype, ops, 'temb_dense0')(temb)
    temb = dense(4 * self.ch, dtype, ops, 'temb_dense1')(nn.swish(temb))
    if self.num_classes > 0:
      label = self.num_classes if label is None else label  # The null label.
      label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (B,))
      temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=dtype,
                             param_dtype=jnp.float32, name='label_emb')(label)
    elif label is not None:
      raise ValueError('UNet got class labels but num_classes = 0 '
                       '(set config.model.num_classes for a class-conditional model).')

    # Down path.
    hs = [conv3x3(self.ch, dtype, ops, 'conv_in')(x)]
    for i in range(num_levels):
      for j in range(self.num_res_blocks):
        h = resnet_block(self.ch * self.ch_mult[i], name=f'down_{i}_block_{j}',
                         **block_kwargs)(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(self.num_groups, dtype=dtype, ops=ops, name=f'down_{i}_attn_{j}')(h)
        hs.append(h)
      if i != num_levels - 1:
        hs.append(Downsample(self.resamp_with_conv, dtype=dtype, ops=ops,
                             name=f'down_{i}_downsample')(hs[-1]))

    # Middle.
    h = hs[-1]
    h = resnet_block(h.shape[-1], name='mid_block_1', **block_kwargs)(h, temb, train)
    h = attn_block(self.num_groups, dtype=dtype, ops=ops, name='mid_attn_1')(h)
    h = resnet_block(h.shape[-1], name='mid_block_2', **block_kwargs)(h, temb, train)

    # Up path.
    for i in reversed(range(num_levels)):
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = resnet_block(self.ch * self.ch_mult[i], name=f'up_{i}_block_{j}',
                         **block_kwargs)(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(self.num_groups, dtype=dtype, ops=ops, name=f'up_{i}_attn_{j}')(h)
      if i != 0:
        h = Upsample(self.resamp_with_conv, dtype=dtype, ops=ops, name=f'up_{i}_upsample')(h)
    assert not hs, 'every skip connection must be consumed'

    # Output.
    h = Normalize(self.num_groups, dtype=dtype, ops=ops, name='norm_out')(h)
    h = conv3x3(self.out_ch, dtype, ops, 'conv_out', zero=True)(h)
    return h.astype(jnp.float32)


def create_model(config, ops: Ops = XLA) -> UNet:
  """Build the `UNet` described by `config.model` and `config.data` (a config validated by
  `ddpm_jax.config_checks.validate`, which checks the shapes), computing with `ops`.

  The output has 2 * channels channels when `config.diffusion.var_type` is learned (mean and
  variance outputs, see `ddpm_jax.diffusion.split_model_output`).
  """
  m = config.model
  learned_var = config.diffusion.var_type in ('learned', 'learned_range')
  return UNet(ch=int(m.ch), out_ch=int(config.data.channels) * (2 if learned_var else 1),
              ch_mult=tuple(int(c) for c in m.ch_mult), num_res_blocks=int(m.num_res_blocks),
              attn_resolutions=tuple(int(r) for r in m.attn_resolutions),
              dropout=float(m.dropout), num_groups=int(m.num_groups),
              resamp_with_conv=bool(m.resamp_with_conv),
              dtype=_DTYPES[config.train.compute_dtype], num_classes=int(m.num_classes),
              remat=bool(m.remat), ops=ops)
