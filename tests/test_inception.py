"""Tests for the FID Inception-v3 network and its weight loading (`ddpm_jax.metrics`).

No test downloads anything: checkpoints are written here, in torch's file formats, from random
weights with pytorch-fid's key names and shapes.
"""

import collections
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.metrics import inception, inception_weights, torch_pickle
from ddpm_jax.metrics.inception import BasicConv2d, InceptionV3
from ddpm_jax.models import count_params
from ddpm_jax.metrics.inception_weights import load_inception_params
from torch_pickle_writer import flax_to_torch_state_dict, save_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import convert_inception_weights  # pylint: disable=wrong-import-position

# pytorch-fid's FIDInceptionV3 (torchvision Inception3 without AuxLogits, 1008 classes):
# sum(p.numel() for p in model.parameters()). torchvision's 1000-class net without the auxiliary
# head has 23,834,568; the 1008-way fc adds 8 * 2049.
FID_INCEPTION_PARAMS = 23_850_960
BATCHNORM_STATS = 34_432  # running mean + var of the 94 BatchNorms (2 x 17,216 channels)
NUM_CONVS = 94


def abstract_variables():
  return jax.eval_shape(lambda: InceptionV3().init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 299, 299, 3), jnp.uint8)))


@pytest.fixture(scope='module')
def random_variables():
  """Random float32 variables, scaled so that the input still matters after 94 layers."""
  rng = np.random.default_rng(0)

  def make(path, s):
    if path[-1].key in ('var', 'scale'):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if path[-1].key == 'kernel' and len(s.shape) == 4:
      fan_in = s.shape[0] * s.shape[1] * s.shape[2]
      return (rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(make, abstract_variables())


def test_parameter_count_and_layout():
  variables = abstract_variables()
  assert set(variables) == {'params', 'batch_stats'}
  assert count_params(variables['params']) == FID_INCEPTION_PARAMS  # As torch's parameters().
  assert sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(
      variables['batch_stats'])) == BATCHNORM_STATS
  shapes = inception_weights.expected_torch_shapes()
  assert len(shapes) == 5 * NUM_CONVS + 2
  assert sum(k.endswith('.conv.weight') for k in shapes) == NUM_CONVS
  assert shapes['Conv2d_1a_3x3.conv.weight'] == (32, 3, 3, 3)
  assert shapes['Mixed_5b.branch_pool.conv.weight'] == (32, 192, 1, 1)
  assert shapes['Mixed_6e.branch7x7_2.conv.weight'] == (192, 192, 1, 7)
  assert shapes['Mixed_7a.branch3x3_2.conv.weight'] == (320, 192, 3, 3)
  assert shapes['Mixed_7c.branch3x3dbl_3b.conv.weight'] == (384, 384, 3, 1)
  assert shapes['Mixed_7c.branch_pool.bn.running_var'] == (192,)
  assert shapes['fc.weight'] == (1008, 2048) and shapes['fc.bias'] == (1008,)
  p = variables['params']
  assert p['Mixed_6e']['branch7x7_2']['conv']['kernel'].shape == (1, 7, 192, 192)  # HWIO
  assert p['fc']['kernel'].shape == (2048, 1008)


def test_output_and_block_shapes():
  variables = abstract_variables()
  images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.uint8)
  (pool3, logits), state = jax.eval_shape(
      lambda v, x: InceptionV3().apply(v, x, capture_intermediates=True), variables, images)
  assert (pool3.shape, pool3.dtype) == ((4, 2048), jnp.float32)
  assert (logits.shape, logits.dtype) == ((4, 1008), jnp.float32)
  inter = state['intermediates']
  expected = {'Conv2d_1a_3x3': (149, 149, 32), 'Conv2d_2b_3x3': (147, 147, 64),
              'Conv2d_4a_3x3': (71, 71, 192), 'Mixed_5b': (35, 35, 256),
              'Mixed_5d': (35, 35, 288), 'Mixed_6a': (17, 17, 768), 'Mixed_6e': (17, 17, 768),
              'Mixed_7a': (8, 8, 1280), 'Mixed_7b': (8, 8, 2048), 'Mixed_7c': (8, 8, 2048)}
  for name, hwc in expected.items():
    assert inter[name]['__call__'][0].shape == (4,) + hwc, name
  with pytest.raises(ValueError, match='3 channels'):
    jax.eval_shape(InceptionV3().apply, variables, jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.uint8))


def test_forward_pass(random_variables):
  # Three images in batches of 2 (the second batch padded); the third is grey. One compilation.
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, size=(32, 32, 1), dtype=np.uint8)
  images[2] = grey
  pool3, logits = inception.extract_features(random_variables, images, batch_size=2)
  assert pool3.shape == (3, 2048) and logits.shape == (3, 1008)
  assert pool3.dtype == logits.dtype == np.float32
  assert np.all(np.isfinite(pool3)) and np.all(pool3 >= 0)  # average of ReLU outputs
  assert pool3.std() > 1e-3 and np.abs(pool3[0] - pool3[1]).max() > 1e-3
  fc = random_variables['params']['fc']
  np.testing.assert_allclose(logits, pool3.astype(np.float64) @ fc['kernel'] + fc['bias'],
                             rtol=1e-4, atol=1e-4)
  grey_pool3, _ = inception.extract_features(random_variables, grey[None], batch_size=2)
  np.testing.assert_allclose(grey_pool3[0], pool3[2], rtol=1e-5, atol=1e-6)


def torch_bilinear_resize(x, out_h, out_w):
  """F.interpolate(mode='bilinear', align_corners=False) on (H, W, C), written out in NumPy."""

  def taps(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0

  h0, h1, lh = taps(x.shape[0], out_h)
  w0, w1, lw = taps(x.shape[1], out_w)
  rows = x[h0] * (1 - lh)[:, None, None] + x[h1] * lh[:, None, None]
  return rows[:, w0] * (1 - lw)[None, :, None] + rows[:, w1] * lw[None, :, None]


@pytest.mark.parametrize('size', [32, 400])
def test_preprocess_matches_pytorch_fid(size):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, size=(1, size, size, 2), dtype=np.uint8)
  out = np.asarray(inception.preprocess(jnp.asarray(images)))
  expected = 2 * torch_bilinear_resize(images[0].astype(np.float64) / 255, 299, 299) - 1
  assert out.shape == (1, 299, 299, 2)
  # Equal up to float32 rounding of the sample positions, which grows with the coordinate (one
  # uint8 level is 0.0078 here).
  np.testing.assert_allclose(out[0], expected, atol=1e-4)
  assert np.mean(np.abs(out[0] - expected)) < 1e-5  # a half-pixel shift would give ~0.1
  same = rng.integers(0, 256, size=(1, 299, 299, 3), dtype=np.uint8)
  np.testing.assert_allclose(np.asarray(inception.preprocess(jnp.asarray(same))),
                             same / 127.5 - 1, atol=1e-6)


def test_pooling_quirks():
  ones = jnp.ones((1, 5, 5, 1))
  # TF's average pool divides by the number of real pixels: 1 everywhere, corners included
  # (counting the padding would give 4/9 at the corners).
  np.testing.assert_allclose(np.asarray(inception.avg_pool_3x3_same(ones)), 1.0, atol=1e-7)
  ramp = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
  out = np.asarray(inception.avg_pool_3x3_same(ramp))[0, :, :, 0]
  assert out[0, 0] == pytest.approx((0 + 1 + 5 + 6) / 4)
  assert out[2, 2] == pytest.approx(12.0)
  neg = -1.0 - ramp  # max pool over padding must not return the padding
  assert np.asarray(inception.max_pool_3x3_same(neg))[0, 0, 0, 0] == -1.0
  assert inception.max_pool_3x3_s2(jnp.zeros((1, 35, 35, 2))).shape == (1, 17, 17, 2)


def test_basic_conv_matches_torch_semantics():
  # Conv2d(4, 3, kernel_size=(1, 3), padding=(0, 1), bias=False) + BatchNorm(eps=1e-3) + ReLU,
  # with a torch-layout (OIHW) weight, against a direct NumPy cross-correlation.
  rng = np.random.default_rng(3)
  w = rng.normal(size=(3, 4, 1, 3)).astype(np.float32)
  gamma, beta = rng.normal(size=3), rng.normal(size=3)
  mean, var = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
  x = rng.normal(size=(1, 5, 6, 4)).astype(np.float32)
  variables = {'params': {'conv': {'kernel': inception_weights.torch_to_flax_layout(w)},
                          'bn': {'scale': gamma, 'bias': beta}},
               'batch_stats': {'bn': {'mean': mean, 'var': var}}}
  out = BasicConv2d(3, (1, 3), padding=(0, 1)).apply(variables, x)
  xp = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (0, 0)))
  conv = np.zeros((5, 6, 3))
  for o in range(3):
    for kx in range(3):
      conv[:, :, o] += np.einsum('hwi,i->hw', xp[:, kx:kx + 6], w[o, :, 0, kx])
  expected = np.maximum((conv - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0)
  np.testing.assert_allclose(np.asarray(out[0]), expected, rtol=1e-4, atol=1e-5)


def torch_style_state_dict(variables):
  """What `model.state_dict()` holds: our weights in torch layouts + num_batches_tracked."""
  state = collections.OrderedDict(sorted(flax_to_torch_state_dict(variables).items()))
  for name in list(state):
    if name.endswith('.bn.running_var'):
      state[name[:-len('running_var')] + 'num_batches_tracked'] = np.array(0, np.int64)
  return state


def assert_variables_equal(a, b):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(flat_a) == len(flat_b)
  for path, value in flat_a:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[path]), err_msg=str(path))


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_load_torch_checkpoint(tmp_path, random_variables, layout):
  state = torch_style_state_dict(random_variables)
  assert len(state) == 6 * NUM_CONVS + 2
  path = str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth')
  save_state_dict(path, state, layout=layout)
  if layout == 'zip':
    with zipfile.ZipFile(path) as zf:
      assert 'pt_inception-2015-12-05-6726825d/data.pkl' in zf.namelist()
  loaded = load_inception_params(path)
  assert_variables_equal(loaded, random_variables)
  # Layouts against the torch tensors themselves.
  k = loaded['params']['Mixed_6b']['branch7x7_2']['conv']['kernel']
  np.testing.assert_array_equal(k, state['Mixed_6b.branch7x7_2.conv.weight'].transpose(2, 3, 1, 0))
  assert k.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(loaded['params']['fc']['kernel'], state['fc.weight'].T)
  np.testing.assert_array_equal(loaded['params']['Mixed_7c']['branch_pool']['bn']['scale'],
                                state['Mixed_7c.branch_pool.bn.weight'])
  np.testing.assert_array_equal(loaded['batch_stats']['Conv2d_1a_3x3']['bn']['var'],
                                state['Conv2d_1a_3x3.bn.running_var'])


def test_convert_to_npz_and_back(tmp_path, random_variables, capsys):
  pth, npz, npz2 = (str(tmp_path / n) for n in ('w.pth', 'w.npz', 'again.npz'))
  save_state_dict(pth, torch_style_state_dict(random_variables))
  assert convert_inception_weights.main([pth, npz]) == 0
  assert '472 arrays, 23,850,960 parameters' in capsys.readouterr().out
  with np.load(npz) as f:
    assert sorted(f.files) == sorted(inception_weights.expected_torch_shapes())
    np.testing.assert_array_equal(f['fc.weight'], np.asarray(random_variables['params']['fc'][
        'kernel']).T)
  assert_variables_equal(load_inception_params(npz), random_variables)
  convert_inception_weights.main([npz, npz2])  # npz -> npz
  with np.load(npz) as a, np.load(npz2) as b:
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_missing_weights_say_where_to_get_them(tmp_path):
  for path in (None, '', str(tmp_path / 'nope.pth')):
    with pytest.raises(FileNotFoundError) as e:
      load_inception_params(path)
    assert inception_weights.FID_WEIGHTS_URL in str(e.value)
    assert 'config.evals.inception.weights' in str(e.value)
  with pytest.raises(FileNotFoundError, match='pytorch-fid'):
    convert_inception_weights.convert(str(tmp_path / 'nope.pth'), str(tmp_path / 'o.npz'))


def test_wrong_state_dict_is_rejected(tmp_path, random_variables):
  state = torch_style_state_dict(random_variables)
  state['AuxLogits.fc.weight'] = np.zeros((1000, 768), np.float32)
  path = str(tmp_path / 'torchvision.pth')
  save_state_dict(path, state)
  with pytest.raises(ValueError, match="torchvision's ImageNet Inception-v3"):
    load_inception_params(path)
  state.pop('AuxLogits.fc.weight')
  state['Mixed_5b.branch1x1.conv.weight'] = np.zeros((64, 192, 3, 3), np.float32)
  save_state_dict(path, state)
  with pytest.raises(ValueError, match='Mixed_5b.branch1x1.conv.weight: shape'):
    load_inception_params(path)


def test_unpickler_refuses_code(tmp_path):
  marker = tmp_path / 'pwned'

  class Evil:

    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  path = str(tmp_path / 'evil.pth')
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('evil/data.pkl', pickle.dumps({'w': Evil()}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match='refusing'):
    torch_pickle.load_state_dict(path)
  assert not marker.exists()


def test_converter_runs_as_a_script(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'convert_inception_weights.py'),
       str(tmp_path / 'missing.pth'), str(tmp_path / 'out.npz')],
      capture_output=True, text=True, check=False, cwd=str(tmp_path))
  assert result.returncode != 0
  assert inception_weights.FID_WEIGHTS_URL in result.stderr
