"""Config values refused up front, each naming its key: before a workdir is written, and before
the step or the hour where it would otherwise fail."""

import ml_collections
import pytest

from configs import default
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


@pytest.mark.parametrize('fields, match', [
    # The default network (ch_mult of 4 levels) halves the image 3 times.
    ({'data__image_size': 30}, r'config.data.image_size=30 is invalid: expected a multiple of '
     r'2\*\*\(len\(config.model.ch_mult\)-1\) = 8'),
    ({'data__image_size': 4, 'model__attn_resolutions': ()},
     r'config.data.image_size=4 is invalid: expected a multiple of .* = 8'),
    ({'model__ch': 100}, r'config.model.num_groups=32 is invalid: expected a divisor of every '
     r'channel count of the network \(config.model.ch and ch \* ch_mult: \[100, 200\]\)'),
    ({'model__ch': 64, 'model__ch_mult': (1, 2, 3), 'model__num_groups': 128},
     r'config.model.num_groups=128 is invalid.*\[64, 128, 192\]'),
    ({'model__num_groups': 0}, r'config.model.num_groups=0 is invalid: expected an integer >= 1'),
    ({'model__attn_resolutions': (12,)}, r'config.model.attn_resolutions=\(12,\) is invalid: '
     r'expected resolutions the network has, \[32, 16, 8, 4\] .*it never has \[12\]'),
    ({'model__attn_resolutions': (16, 2)}, r'attn_resolutions=\(16, 2\).*never has \[2\]'),
    ({'model__dropout': 1.0}, r'config.model.dropout=1.0 is invalid: expected a rate in \[0, 1\)'),
    ({'model__ch': 2}, r'config.model.ch=2 is invalid: expected an integer >= 4'),
    ({'model__ch_mult': ()}, r'config.model.ch_mult=\(\) is invalid'),
    ({'model__num_res_blocks': 0}, r'config.model.num_res_blocks=0 is invalid'),
    ({'model__num_classes': -1}, r'config.model.num_classes=-1 is invalid'),
])
def test_network_shapes_are_checked_against_the_image_size(fields, match):
  """The U-Net's shapes, checked with the rest of the config (the model assumes them)."""
  config = default.get_config()  # 32x32, ch 128, ch_mult (1, 2, 2, 2), 32 groups.
  for key, value in fields.items():
    section, name = key.split('__')
    config[section][name] = value
  with pytest.raises(ValueError, match=match):
    config_checks.validate(config)


def test_default_and_tiny_networks_validate():
  config_checks.validate(default.get_config())
  config = default.get_config()
  config.data.image_size, config.model.attn_resolutions = 64, (16, 8)
  config_checks.validate(config)
  config_checks.validate(make_tiny_config())


def test_exact_reduction_needs_replicated_parameters():
  _refused(r'config.train.exact_reduction=True is invalid: expected False unless '
           r'config.train.mesh_shape=\(-1, 1\)',
           train__exact_reduction=True, train__mesh_shape=(-1, 2))
  for mesh_shape in ((-1, 1), (-1,)):
    config = make_tiny_config()
    config.train.update(exact_reduction=True, mesh_shape=mesh_shape)
    config_checks.validate(config)
