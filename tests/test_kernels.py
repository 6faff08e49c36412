"""The kernels backends (`ddpm_jax.kernels`): which one a run gets, and that each leaves the
U-Net's parameters and function unchanged (outputs and gradients within 1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config
from ddpm_jax import config_checks, kernels, sharding
from ddpm_jax.models import XLA, create_model
from test_unet import small_config

BACKENDS = {'xla': kernels.XLA, 'cpu': kernels.CPU}


@pytest.mark.parametrize('name,platform,devices,dtype,want', [
    ('auto', 'cpu', 1, 'float32', 'cpu'),
    ('auto', 'cpu', 4, 'float32', 'xla'),     # oneDNN's custom calls cannot be split
    ('auto', 'cpu', 1, 'bfloat16', 'xla'),    # oneDNN's convolutions are float32 only
    ('auto', 'gpu', 1, 'float32', 'xla'),
    ('auto', 'tpu', 8, 'bfloat16', 'xla'),
    ('xla', 'cpu', 1, 'float32', 'xla'),
    ('cpu', 'cpu', 1, 'bfloat16', 'cpu'),
])
def test_select(name, platform, devices, dtype, want):
  assert kernels.select(name, platform, devices, dtype) is BACKENDS[want]


@pytest.mark.parametrize('platform,devices', [('gpu', 1), ('cpu', 2)])
def test_cpu_backend_elsewhere_is_one_clear_error(platform, devices):
  with pytest.raises(ValueError, match=r"config.model.kernels='cpu' needs a single CPU device; "
                     rf'this run has {devices} {platform} device\(s\)'):
    kernels.select('cpu', platform, devices, 'float32')


def test_unknown_backend_is_refused_naming_the_key():
  config = get_config()
  config.model.kernels = 'gpu'
  with pytest.raises(ValueError, match=r"config.model.kernels='gpu' is invalid: expected one "
                     r"of 'auto', 'xla', 'cpu'"):
    config_checks.validate(config)


def test_from_config_reads_the_mesh_and_the_compute_dtype():
  config = get_config()
  mesh = sharding.make_mesh()
  single_cpu = jax.default_backend() == 'cpu' and jax.device_count() == 1
  assert kernels.from_config(config, mesh) is (kernels.CPU if single_cpu else XLA)
  config.train.compute_dtype = 'bfloat16'
  assert kernels.from_config(config, mesh) is XLA
  config.model.kernels = 'xla'
  config.train.compute_dtype = 'float32'
  assert kernels.from_config(config, mesh) is XLA
  assert kernels.describe(XLA) == 'xla (stock JAX)'
  assert kernels.describe(kernels.CPU).startswith('cpu (fused GroupNorm; oneDNN convolutions: ')


def test_stock_backend_never_touches_onednn(monkeypatch):
  """A GPU or TPU run (and 'xla' anywhere) neither loads nor compiles the oneDNN library."""
  def fail():
    raise AssertionError('oneDNN consulted')
  monkeypatch.setattr(kernels.onednn, 'available', fail)
  ops = kernels.select('auto', 'gpu', 1, 'float32')
  model = create_model(small_config(), ops=ops)
  x, t = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,), jnp.int32)
  jax.eval_shape(lambda: jax.grad(lambda v: jnp.sum(model.apply(
      v, x, t, train=True, rngs={'dropout': jax.random.PRNGKey(0)})))(
          model.init(jax.random.PRNGKey(0), x, t)))
  with pytest.raises(AssertionError, match='oneDNN consulted'):   # the CPU backend does
    jax.eval_shape(lambda: create_model(small_config(), ops=kernels.CPU).init(
        jax.random.PRNGKey(0), x, t))


def test_every_backend_same_parameters_outputs_and_gradients():
  """Every kind of layer (attention, both resamplings with convolutions, 1x1 shortcuts, an
  output convolution to 3 channels), with dropout."""
  config = small_config(dropout=0.3)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), jnp.float32, -1.0, 1.0)
  t = jnp.array([3, 700])
  models = {n: create_model(config, ops=ops) for n, ops in BACKENDS.items()}
  init = {n: jax.jit(m.init)(jax.random.PRNGKey(0), x, t) for n, m in models.items()}
  # The same parameter tree and the same initial values.
  jax.tree.map(np.testing.assert_array_equal, init['xla'], init['cpu'])
  # Non-zero everywhere, so that the zero-initialised layers matter.
  variables = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape), init['xla'])
  rngs = {'dropout': jax.random.PRNGKey(5)}
  results = {}
  for n, m in models.items():
    loss = lambda v, x, m=m: jnp.sum(jnp.sin(3 * m.apply(v, x, t, train=True, rngs=rngs)))
    results[n] = (jax.jit(lambda v, x, m=m: m.apply(v, x, t, train=False))(variables, x),
                  jax.jit(lambda v, x, m=m: m.apply(v, x, t, train=True, rngs=rngs))(
                      variables, x),
                  jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x))
  (eval_x, train_x, (grads_x, dx_x)), (eval_c, train_c, (grads_c, dx_c)) = (
      results['xla'], results['cpu'])
  assert float(jnp.max(jnp.abs(train_x - eval_x))) > 1e-2   # dropout did something
  for got, want in ((eval_c, eval_x), (train_c, train_x), (dx_c, dx_x)):
    np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.max(jnp.abs(want))), rtol=1e-5)
  # Gradients, leaf by leaf, within 1e-5 of the largest gradient of the leaf's kind. The
  # attention's key bias has a zero gradient in exact arithmetic (softmax is invariant to it).
  largest = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_x))
  for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(grads_x)[0],
                               jax.tree.leaves(grads_c)):
    name = jax.tree_util.keystr(path)
    if "['k']['bias']" in name:
      assert float(jnp.max(jnp.abs(got))) < 1e-5 * largest, name
      continue
    np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.max(jnp.abs(want))), rtol=1e-5,
                               err_msg=name)
