"""Config values refused up front, each naming its key: before a workdir is written, and before
the step or the hour where it would otherwise fail."""

import ml_collections
import pytest

from conftest import make_tiny_config
from ddpm_jax import config_checks


def _refused(match, **fields):
  config = make_tiny_config()
  for key, value in fields.items():
    section, name = key.split('__')
    config[section][name] = value
  with pytest.raises(ValueError, match=match):  # errors.ConfigError, a ValueError.
    config_checks.validate(config)


@pytest.mark.parametrize('keep', [0, -1])
def test_keep_checkpoints_must_keep_one(keep):
  _refused(rf'config.train.keep_checkpoints={keep} is invalid: expected an integer >= 1',
           train__keep_checkpoints=keep)


@pytest.mark.parametrize('key', ['train', 'sample', 'eval'])
def test_seeds_are_in_numpys_range(key):
  _refused(rf'config.{key}.seed=-1 is invalid', **{f'{key}__seed': -1})
  _refused(rf'config.{key}.seed=4294967296 is invalid', **{f'{key}__seed': 2 ** 32})


def test_unknown_dataset_is_refused_with_the_valid_names():
  _refused(r"Unknown dataset 'nonexistent' \(config.data.dataset\).*cifar10",
           data__dataset='nonexistent')


def test_sample_grids_need_images():
  _refused(r'config.train.num_sample_grid=0 is invalid.*sample_every=1',
           train__num_sample_grid=0, train__sample_every=1)
  config = make_tiny_config()
  config.train.num_sample_grid, config.train.sample_every = 0, 0  # No grids: fine.
  config_checks.validate(config)


@pytest.mark.parametrize('var_type', ['learned', 'learned_range'])
def test_mse_cannot_train_a_learned_variance(var_type):
  _refused(rf"config.diffusion.loss='mse' is invalid: expected 'kl' or 'hybrid' with "
           rf"config.diffusion.var_type='{var_type}'",
           diffusion__loss='mse', diffusion__var_type=var_type)
  for loss in ('kl', 'hybrid'):
    config = make_tiny_config()
    config.diffusion.update(loss=loss, var_type=var_type)
    config_checks.validate(config)


def test_float16_is_refused_for_bfloat16():
  _refused(r"config.train.compute_dtype='float16' is invalid.*loss scaling.*bfloat16",
           train__compute_dtype='float16')


@pytest.mark.parametrize('key', ['ch_mult', 'attn_resolutions'])
def test_a_string_for_a_tuple_names_the_key(key):
  """`--config.model.ch_mult=abc` reaches the config as a string (config_flags does not
  type-check tuples), which used to fail as a TypeError deep inside validation."""
  config = ml_collections.ConfigDict(make_tiny_config().to_dict(), type_safe=False)
  config.model[key] = 'abc'
  with pytest.raises(ValueError, match=rf"config.model.{key}='abc' is invalid"):
    config_checks.validate(config)
