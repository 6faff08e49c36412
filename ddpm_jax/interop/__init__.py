"""Weights in and out of ddpm-jax: diffusers' `UNet2DModel` / `DDPMPipeline` format.

* `unet_names`: our U-Net's parameter paths and layouts <-> diffusers' state_dict keys.
* `diffusers_config`: diffusers' `config.json` / `scheduler_config.json` <-> our config (written
  for an export, checked on an import).
* `diffusers`: reading and writing diffusers folders (safetensors, the older `.bin` through the
  torch-free reader `ddpm_jax.metrics.torch_pickle`), Hugging Face Hub ids, `load_params`.
"""

from ddpm_jax.errors import UserError


class InteropError(UserError, ValueError):
  """A diffusers model that cannot be read, does not match the config, or a config that
  diffusers cannot express. The message is one line, meant to be shown as it is."""
