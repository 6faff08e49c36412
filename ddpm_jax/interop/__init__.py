"""Weights in and out of ddpm-jax in diffusers' `UNet2DModel` / `DDPMPipeline` format:
parameter names (`unet_names`), configs (`diffusers_config`), folders and Hub ids (`diffusers`).
"""

from ddpm_jax.errors import UserError


class InteropError(UserError, ValueError):
  """A diffusers model that cannot be read, does not match the config, or a config that
  diffusers cannot express. The message is one line, meant to be shown as it is."""
