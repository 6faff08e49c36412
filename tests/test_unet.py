"""Tests for the DDPM U-Net (`ddpm_jax.models`), with every kernels backend."""

import importlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config
from ddpm_jax import kernels
from ddpm_jax.models import (AttnBlock, Downsample, ResnetBlock, UNet, Upsample, count_params,
                             create_model, timestep_embedding)

BACKENDS = {'xla': kernels.XLA, 'cpu': kernels.CPU}
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')

CIFAR10_PARAMS = 35_746_307  # The paper's CIFAR-10 network (as counted in PyTorch ports).
LSUN256_PARAMS = 113_673_219  # ch_mult (1, 1, 2, 2, 4, 4) at 256x256 ("114M" in the paper).


def small_config(**model_overrides):
  """A 16x16 U-Net with two levels (177,427 parameters) for fast forward passes."""
  config = get_config()
  config.data.image_size = 16
  config.data.channels = 3
  config.model.ch = 16
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (8,)
  config.model.num_groups = 4
  config.model.dropout = 0.0
  for k, v in model_overrides.items():
    if k == 'dtype':  # The compute dtype lives in the train group.
      config.train.compute_dtype = v
    else:
      config.model[k] = v
  return config


def param_shapes(config, ops=kernels.XLA):
  model = create_model(config, ops=ops)
  s = config.data.image_size
  x = jnp.zeros((1, s, s, config.data.channels), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0)}, x, t, train=False))['params']


def inputs(config, batch=2, seed=0):
  s = config.data.image_size
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(-1.0, 1.0, (batch, s, s, config.data.channels)), jnp.float32)
  t = jnp.arange(batch, dtype=jnp.int32) * 100
  return x, t


def perturb(variables, seed=1, scale=0.05):
  """Add noise to every parameter so that the zero-initialised layers become non-zero."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), variables)


def random_variables(module, *args, seed=2, **kwargs):
  """Random (non-zero) parameters from NumPy, skipping the slow-to-compile `module.init`."""
  shapes = jax.eval_shape(
      lambda: module.init({'params': jax.random.PRNGKey(0)}, *args, **kwargs))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    noise = rng.standard_normal(leaf.shape)
    if name == 'kernel':
      return jnp.asarray(noise / math.sqrt(math.prod(leaf.shape[:-1])), jnp.float32)
    return jnp.asarray((1.0 if name == 'scale' else 0.0) + 0.05 * noise, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(params=sorted(BACKENDS))
def ops(request):
  return BACKENDS[request.param]


@pytest.fixture(scope='module', params=sorted(BACKENDS))
def tiny(request):
  """The tiny model (dropout 0.5) with each kernels backend, its real initial variables,
  inputs and a jitted apply.

  Shared by the forward-pass tests so that the model is initialised and compiled once.
  """
  config = small_config(dropout=0.5)
  model = create_model(config, ops=BACKENDS[request.param])
  x, t = inputs(config)
  init = jax.jit(lambda key, x, t: model.init({'params': key}, x, t, train=False))
  # An 'rbg' key only to save compile time: a threefry-based init takes ~10 s to compile on a
  # 2-core CPU. (Initialising with a standard `PRNGKey` is covered by the eval_shape tests.)
  variables = init(jax.random.key(0, impl='rbg'), x, t)
  return model, variables, x, t, jit_apply(model)


def jit_apply(model):
  return jax.jit(model.apply, static_argnames='train')


# Parameter counts (shape-only, nothing is materialised).


def test_param_count_cifar10():
  config = get_config()  # The defaults are the paper's CIFAR-10 settings.
  assert (config.model.ch, tuple(config.model.ch_mult), config.model.num_res_blocks) == (
      128, (1, 2, 2, 2), 2)
  assert count_params(param_shapes(config)) == CIFAR10_PARAMS


def test_param_count_256():
  config = get_config()
  config.data.image_size = 256
  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.dropout = 0.0
  assert count_params(param_shapes(config)) == LSUN256_PARAMS


def test_params_are_float32_and_named():
  config = get_config()
  config.train.compute_dtype = 'bfloat16'
  shapes = param_shapes(config)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype('float32')}
  # Attention only at 16x16 (level 1) and in the middle.
  attn = sorted(k for k in shapes if 'attn' in k)
  assert attn == ['down_1_attn_0', 'down_1_attn_1', 'mid_attn_1',
                  'up_1_attn_0', 'up_1_attn_1', 'up_1_attn_2']
  assert shapes['temb_dense0']['kernel'].shape == (128, 512)
  assert shapes['conv_out']['kernel'].shape == (3, 3, 128, 3)
  # Downsample keeps channels; the 1x1 shortcut appears only when channels change.
  assert shapes['down_0_downsample']['conv']['kernel'].shape == (3, 3, 128, 128)
  assert 'nin_shortcut' in shapes['down_1_block_0']
  assert 'nin_shortcut' not in shapes['down_1_block_1']


@pytest.mark.parametrize('name', ['cifar10', 'fashion_mnist', 'fashion_mnist_cond',
                                  'celebahq256'])
def test_parameter_tree_is_unchanged(name, ops):
  """Every parameter's path, shape and dtype equal the committed listing (tests/data), with
  every backend: checkpoints and imported weights keep loading."""
  config = importlib.import_module(f'configs.{name}').get_config()
  shapes = param_shapes(config, ops)
  got = ['/'.join(k.key for k in path) + ' ' + ','.join(map(str, leaf.shape)) + ' '
         + str(leaf.dtype) for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]]
  with open(os.path.join(DATA, f'param_tree_{name}.txt')) as f:
    assert got == f.read().splitlines()


# Forward passes on a tiny network.


def test_output_shape_and_zero_init(tiny):
  _, variables, x, t, apply = tiny
  out = apply(variables, x, t, train=False)
  assert out.shape == x.shape
  assert out.dtype == jnp.float32
  # conv_out is zero-initialised, so the freshly initialised network predicts exactly 0.
  assert np.all(np.asarray(out) == 0.0)
  params = variables['params']
  for kernel in (params['conv_out']['kernel'], params['down_0_block_0']['conv2']['kernel'],
                 params['mid_attn_1']['proj_out']['kernel']):
    assert np.all(np.asarray(kernel) == 0.0)
  assert float(jnp.abs(params['conv_in']['kernel']).max()) > 0
  # Biases start at zero, GroupNorm scales at one.
  assert np.all(np.asarray(params['down_0_block_0']['conv1']['bias']) == 0.0)
  assert np.all(np.asarray(params['norm_out']['group_norm']['scale']) == 1.0)


def test_out_ch_field_and_channels():
  config = small_config()
  config.data.channels = 1
  model = create_model(config)
  assert model.out_ch == 1
  x, t = inputs(config)
  assert jit_apply(model)(random_variables(model, x, t), x, t).shape == x.shape
  wide = model.clone(out_ch=2)  # e.g. a learned-variance model outputs 2 * channels.
  out = jit_apply(wide)(random_variables(wide, x, t), x, t)
  assert out.shape == x.shape[:3] + (2,)


def test_timestep_embedding_matches_numpy():
  t = np.array([0, 1, 7, 999], np.int32)
  dim = 10
  half = dim // 2
  freq = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
  ref = np.concatenate([np.sin(t[:, None] * freq), np.cos(t[:, None] * freq)], axis=1)
  got = np.asarray(timestep_embedding(jnp.asarray(t), dim))
  assert got.shape == (4, dim) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-4)  # float32 sin of ~1e3
  # Hand-checked values: freq = (1, 10000**-0.25, 10000**-0.5, 10000**-0.75, 1e-4).
  np.testing.assert_allclose(got[1, :5], [math.sin(1.0), math.sin(0.1), math.sin(0.01),
                                          math.sin(0.001), math.sin(1e-4)], rtol=1e-6)
  np.testing.assert_allclose(got[0], [0.0] * 5 + [1.0] * 5)
  np.testing.assert_allclose(got[2, 5], math.cos(7.0), rtol=1e-6)
  # Odd width: zero column appended.
  odd = np.asarray(timestep_embedding(jnp.asarray(t), 9))
  assert odd.shape == (4, 9) and np.all(odd[:, -1] == 0)
  with pytest.raises(ValueError):
    timestep_embedding(jnp.asarray(t), 2)


def test_output_depends_on_t(tiny):
  model, variables, x, _, apply = tiny
  variables = perturb(variables)
  x2 = jnp.concatenate([x[:1], x[:1]])
  out = apply(variables, x2, jnp.array([0, 500], jnp.int32), train=False)
  assert np.all(np.isfinite(np.asarray(out)))
  assert float(jnp.abs(out).mean()) > 1e-3
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3
  # Same x and t -> same output.
  same = apply(variables, x2, jnp.array([3, 3], jnp.int32), train=False)
  np.testing.assert_array_equal(np.asarray(same[0]), np.asarray(same[1]))
  # A scalar t is broadcast over the batch.
  shape = jax.eval_shape(lambda: model.apply(variables, x2, jnp.array(3, jnp.int32)))
  assert shape.shape == x2.shape


def test_dropout(tiny):
  model, variables, x, t, apply = tiny
  assert model.dropout == 0.5
  variables = perturb(variables)
  train_apply = jax.jit(lambda v, x, t, key: model.apply(v, x, t, train=True,
                                                         rngs={'dropout': key}))
  a = train_apply(variables, x, t, jax.random.PRNGKey(0))
  b = train_apply(variables, x, t, jax.random.PRNGKey(1))
  a2 = train_apply(variables, x, t, jax.random.PRNGKey(0))
  assert float(jnp.abs(a - b).max()) > 1e-3
  np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
  # Eval mode: deterministic, no rng needed, and different from the train-mode output.
  e1 = apply(variables, x, t, train=False)
  e2 = apply(variables, x, t, train=False, rngs={'dropout': jax.random.PRNGKey(5)})
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
  assert float(jnp.abs(a - e1).max()) > 1e-3


def test_bfloat16_close_to_float32(tiny):
  model, variables, x, t, apply = tiny
  variables = perturb(variables)
  ref = apply(variables, x, t, train=False)
  model16 = create_model(small_config(dropout=0.5, dtype='bfloat16'), ops=model.ops)
  assert model16.dtype == jnp.bfloat16
  out = jit_apply(model16)(variables, x, t, train=False)  # Same float32 params.
  assert out.dtype == jnp.float32 and out.shape == ref.shape
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert rel < 5e-2, rel
  assert rel > 0  # It really ran in reduced precision.
  # The bf16 model still has float32 params.
  shapes = jax.eval_shape(lambda: model16.init({'params': jax.random.PRNGKey(0)}, x, t))
  assert {p.dtype for p in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype('float32')}


def test_avgpool_resampling(ops):
  config = small_config(resamp_with_conv=False)
  model = create_model(config, ops=ops)
  x, t = inputs(config)
  variables = random_variables(model, x, t)
  assert 'down_0_downsample' not in variables['params']
  out = jit_apply(model)(variables, x, t)
  assert out.shape == x.shape and np.all(np.isfinite(np.asarray(out)))
  assert float(jnp.abs(out).mean()) > 1e-3


# Blocks against independent NumPy references.


def np_group_norm(x, groups, scale, bias, eps=1e-6):
  B, H, W, C = x.shape
  g = x.reshape(B, H, W, groups, C // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def np_swish(x):
  return x / (1.0 + np.exp(-x))


def np_conv(x, kernel, bias, stride=1, pads=(1, 1)):
  """Cross-correlation, NHWC / HWIO, with (before, after) zero padding on H and W."""
  kh, kw = kernel.shape[:2]
  x = np.pad(x, ((0, 0), pads, pads, (0, 0)))
  H = (x.shape[1] - kh) // stride + 1
  W = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], H, W, kernel.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * H:stride, j:j + stride * W:stride]
      out += patch @ kernel[i, j]
  return out + bias


def np_dense(x, p):
  return x @ np.asarray(p['kernel'], np.float64) + np.asarray(p['bias'], np.float64)


def _as_np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def test_resnet_block_matches_numpy(ops):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
  temb = rng.standard_normal((2, 12)).astype(np.float32)
  block = ResnetBlock(out_ch=6, num_groups=2, ops=ops)
  variables = random_variables(block, jnp.asarray(x), jnp.asarray(temb), train=False)
  out = block.apply(variables, jnp.asarray(x), jnp.asarray(temb), train=False)
  p = _as_np(variables['params'])
  xd = x.astype(np.float64)
  h = np_swish(np_group_norm(xd, 2, p['norm1']['group_norm']['scale'],
                             p['norm1']['group_norm']['bias']))
  h = np_conv(h, p['conv1']['kernel'], p['conv1']['bias'])
  h = h + np_dense(np_swish(temb.astype(np.float64)), p['temb_proj'])[:, None, None, :]
  h = np_swish(np_group_norm(h, 2, p['norm2']['group_norm']['scale'],
                             p['norm2']['group_norm']['bias']))
  h = np_conv(h, p['conv2']['kernel'], p['conv2']['bias'])
  ref = np_dense(xd, p['nin_shortcut']) + h
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_attn_block_matches_numpy(ops):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
  block = AttnBlock(num_groups=4, ops=ops)
  variables = random_variables(block, jnp.asarray(x))
  out = block.apply(variables, jnp.asarray(x))
  p = _as_np(variables['params'])
  xd = x.astype(np.float64)
  h = np_group_norm(xd, 4, p['norm']['group_norm']['scale'], p['norm']['group_norm']['bias'])
  q, k, v = (np_dense(h, p[n]).reshape(2, 16, 8) for n in 'qkv')
  w = np.einsum('bic,bjc->bij', q, k) / np.sqrt(8)
  w = np.exp(w - w.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  ref = xd + np_dense(np.einsum('bij,bjc->bic', w, v).reshape(2, 4, 4, 8), p['proj_out'])
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_resampling_matches_numpy(ops):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
  down = Downsample(with_conv=True, ops=ops)
  variables = random_variables(down, jnp.asarray(x))
  p = _as_np(variables['params'])['conv']
  # TF 'SAME' for a stride-2 3x3 conv on an even size pads 0 before and 1 after.
  ref = np_conv(x.astype(np.float64), p['kernel'], p['bias'], stride=2, pads=(0, 1))
  out = down.apply(variables, jnp.asarray(x))
  assert out.shape == (1, 3, 3, 4)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)
  pooled = Downsample(with_conv=False, ops=ops).apply({}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(pooled),
                             x.reshape(1, 3, 2, 3, 2, 4).mean(axis=(2, 4)), rtol=1e-6)
  nearest = Upsample(with_conv=False, ops=ops).apply({}, jnp.asarray(x))
  assert nearest.shape == (1, 12, 12, 4)
  np.testing.assert_array_equal(np.asarray(nearest)[:, ::2, 1::2], x)
  np.testing.assert_array_equal(np.asarray(nearest)[:, 1::2, ::2], x)


# Building.


def test_valid_configs_build():
  config = get_config()
  config.data.image_size = 64
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.attn_resolutions = (16, 8)
  assert isinstance(create_model(config), UNet)


def test_indivisible_input_raises():
  model = create_model(small_config(ch_mult=(1, 2, 2)))
  x = jnp.zeros((1, 6, 6, 3))
  with pytest.raises(ValueError, match='divisible'):
    model.init({'params': jax.random.PRNGKey(0)}, x, jnp.zeros((1,), jnp.int32))


@pytest.mark.parametrize('size', [1, 2, 5])
def test_upsample_is_nearest_upsampling_then_conv(size, ops):
  """`Upsample` computes conv3x3(nearest x2 (x)) (the CPU backend at the low resolution):
  same values and gradients as upsampling first, with `nn.Conv`'s parameters."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, 6)).astype(np.float32))
  up = Upsample(with_conv=True, ops=ops)
  variables = random_variables(up, x)
  p = variables['params']['conv']
  assert p['kernel'].shape == (3, 3, 6, 6) and p['bias'].shape == (6,)

  def reference(x, kernel, bias):
    u = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return jax.lax.conv_general_dilated(u, kernel, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias

  out = up.apply(variables, x)
  assert out.shape == (2, 2 * size, 2 * size + 2, 6)
  np.testing.assert_allclose(out, reference(x, p['kernel'], p['bias']), rtol=1e-5, atol=1e-5)
  ct = jnp.asarray(rng.standard_normal(out.shape).astype(np.float32))
  got = jax.grad(lambda x, v: jnp.sum(up.apply(v, x) * ct), argnums=(0, 1))(x, variables)
  want = jax.grad(lambda x, k, b: jnp.sum(reference(x, k, b) * ct), argnums=(0, 1, 2))(
      x, p['kernel'], p['bias'])
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got[1]['params']['conv']['kernel'], want[1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got[1]['params']['conv']['bias'], want[2], rtol=1e-4, atol=1e-4)
