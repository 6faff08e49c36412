"""Every shipped config loads, validates and builds the network it documents."""

import importlib

import jax
import jax.numpy as jnp
import pytest

from ddpm_jax import config_checks
from ddpm_jax.models import count_params, create_model

# Exact parameter counts (printed at start-up and quoted in the README).
EXPECTED = {
    'cifar10': 35_746_307,
    'celebahq256': 113_673_219,
    'lsun_church256': 113_673_219,
    'lsun_bedroom256': 113_673_219,
    'lsun_cat256': 113_673_219,
    'flowers102': 63_151_235,
    'fashion_mnist': 1_112_801,
    'fashion_mnist_long': 1_112_801,  # The quickstart's network, trained longer.
    'fashion_mnist_cond': 1_114_209,  # + the label embedding, 11 rows (10 + null) x 4 ch.
}


def _count(config):
  model = create_model(config)
  s = config.data.image_size
  shapes = jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0)},
                         jnp.zeros((1, s, s, config.data.channels)),
                         jnp.zeros((1,), jnp.int32)))
  return count_params(shapes['params'])


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_config_builds_with_documented_parameter_count(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  config_checks.validate(config)
  assert _count(config) == EXPECTED[name]


def test_validation_names_the_bad_key():
  config = importlib.import_module('configs.cifar10').get_config()
  config.optim.ema_decay = 1.5
  with pytest.raises(ValueError, match=r'config.optim.ema_decay=1.5 is invalid'):
    config_checks.validate(config)
  config = importlib.import_module('configs.cifar10').get_config()
  config.diffusion.var_type = 'learnt'
  with pytest.raises(ValueError, match="config.diffusion.var_type='learnt'.*'fixedlarge'"):
    config_checks.validate(config)
