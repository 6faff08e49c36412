"""The XLA:CPU presets: appended to XLA_FLAGS, never over a user's own choice."""

import pytest

from ddpm_jax import xla_flags


def test_presets_append_their_flags_and_respect_the_users_choice():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  out = xla_flags.apply_cpu_preset('train', env)
  assert out == ('--xla_force_host_platform_device_count=4 '
                 '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution')
  assert env['XLA_FLAGS'] == out
  assert xla_flags.apply_cpu_preset('inference', env) == out  # Already chosen: unchanged.
  env = {}
  assert xla_flags.apply_cpu_preset('inference', env) == (
      '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot')
  env = {}
  assert xla_flags.apply_cpu_preset('none', env) == '' and 'XLA_FLAGS' not in env
  with pytest.raises(ValueError, match="Unknown XLA:CPU preset 'fast'"):
    xla_flags.apply_cpu_preset('fast', {})
