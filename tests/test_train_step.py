"""The pure train step: Algorithm 1, Adam with warm-up, clipping and EMA."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, make_tiny_config
from ddpm_jax import optim
from ddpm_jax.experiment import Experiment


def _batch(config, seed=0):
  shape = (config.train.batch_size, config.data.image_size, config.data.image_size,
           config.data.channels)
  return jax.random.uniform(jax.random.PRNGKey(seed), shape, minval=-1, maxval=1)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_learning_rate_warmup():
  c = make_tiny_config()
  c.optim.lr, c.optim.warmup_steps = 2e-4, 5000
  lr = optim.learning_rate_schedule(c.optim)
  assert float(lr(0)) == 0.0
  assert float(lr(2500)) == pytest.approx(1e-4)
  assert float(lr(5000)) == pytest.approx(2e-4)
  assert float(lr(10**6)) == pytest.approx(2e-4)


def test_one_step_updates_step_params_and_ema_exactly():
  c = make_tiny_config()
  exp = Experiment.from_config(c)
  state = exp.init_state()
  p0, rng0 = _leaves(state.params), np.asarray(state.rng)
  new, metrics = exp.jitted_train_step()(state, _batch(c))
  assert int(new.step) == 1
  np.testing.assert_array_equal(new.rng, rng0)  # The base key never moves; steps fold it in.
  assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0
  assert float(metrics['lr']) == pytest.approx(1e-3)
  p1 = _leaves(new.params)
  assert any(not np.allclose(a, b) for a, b in zip(p0, p1))
  for e, a, b in zip(_leaves(new.ema_params), p0, p1):
    np.testing.assert_allclose(e, 0.9 * a + 0.1 * b, rtol=1e-5, atol=1e-7)


def test_first_step_of_warmup_leaves_params_unchanged():
  c = make_tiny_config()
  c.optim.warmup_steps = 10
  exp = Experiment.from_config(c)
  state = exp.init_state()
  p0 = _leaves(state.params)
  new, metrics = exp.jitted_train_step()(state, _batch(c))
  assert float(metrics['lr']) == 0.0
  for a, b in zip(p0, _leaves(new.params)):
    np.testing.assert_array_equal(a, b)


def test_loss_decreases_on_a_fixed_batch():
  c = make_tiny_config()
  c.model.dropout = 0.0
  exp = Experiment.from_config(c)
  state = exp.init_state()
  step = exp.jitted_train_step()
  batch = _batch(c)
  losses = []
  for _ in range(60):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
  # L_simple starts near 1 (eps has unit variance and the output layer is zero-initialised).
  assert 0.8 < np.mean(losses[:5]) < 1.2
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])


def test_gradient_clipping_bounds_the_update():
  c = make_tiny_config()
  c.optim.grad_clip = 1e-6
  c.optim.lr = 1.0
  exp = Experiment.from_config(c)
  # Adam normalises the step, so clipping shows in the optimizer's first moment instead.
  state = exp.init_state()
  new, metrics = exp.jitted_train_step()(state, _batch(c))
  mu = new.opt_state[1][0].mu
  assert float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(mu)))) == pytest.approx(
      0.1 * 1e-6, rel=1e-3)
  assert float(metrics['grad_norm']) > 1e-6


SHARDED_SCRIPT = textwrap.dedent('''
    import jax, numpy as np
    from conftest import make_tiny_config
    from ddpm_jax import sharding
    from ddpm_jax.experiment import Experiment
    assert jax.device_count() == 4, jax.devices()
    c = make_tiny_config(batch_size=8)
    # Adam divides by sqrt(v) + eps: with the default eps = 1e-8 a gradient entry of size 1e-9
    # (reduction-order noise) moves a parameter by ~lr. A larger eps keeps the comparison about
    # the sharding, not about Adam's amplification of rounding.
    c.optim.adam_eps = 1e-3
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      exp = Experiment.from_config(c, mesh=sharding.make_mesh(devices))
      state, step = exp.init_state(), exp.jitted_train_step()
      losses = []
      for i in range(3):
        x = jax.random.uniform(jax.random.PRNGKey(i), (8, 8, 8, 1), minval=-1, maxval=1)
        state, m = step(state, sharding.global_batch_from_local(np.asarray(x), exp.mesh))
        losses.append(float(m['loss']))
      results.append((losses, [np.asarray(p) for p in jax.tree.leaves(state.params)],
                      state.params['conv_in']['kernel'].sharding))
    (l1, p1, _), (l4, p4, sh) = results
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for a, b in zip(p1, p4):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert len(sh.device_set) == 4
    try:
      sharding.check_divisible(6, exp.mesh)
      raise SystemExit('no error for an indivisible batch')
    except ValueError as e:
      assert 'does not divide across the 4 devices' in str(e)
    print('SHARDED_OK', l1)
''')


def test_sharded_train_step_equals_single_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'tests'), ROOT]))
  out = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'SHARDED_OK' in out.stdout


def test_bfloat16_compute_matches_float32_with_float32_state():
  """train.compute_dtype='bfloat16': the loss of a trained state on a fixed batch is the float32
  loss within bf16 rounding (but not bit-equal: bf16 is really used), and parameters, EMA and
  Adam state stay float32."""
  c = make_tiny_config()
  c.model.dropout = 0.0
  exp32 = Experiment.from_config(c)
  state = exp32.init_state()
  step32 = exp32.jitted_train_step()
  for i in range(3):  # Past the zero-initialised output layer, so the network matters.
    state, _ = step32(state, _batch(c, seed=i))
  c16 = make_tiny_config()
  c16.model.dropout = 0.0
  c16.train.compute_dtype = 'bfloat16'
  exp16 = Experiment.from_config(c16)
  copy = lambda s: jax.tree.map(jnp.copy, s)
  new32, m32 = step32(copy(state), _batch(c, seed=9))
  new16, m16 = exp16.jitted_train_step()(copy(state), _batch(c, seed=9))
  l32, l16 = float(m32['loss']), float(m16['loss'])
  assert l16 == pytest.approx(l32, rel=2e-2) and l16 != l32
  assert float(m16['grad_norm']) == pytest.approx(float(m32['grad_norm']), rel=5e-2)
  for tree in (new16.params, new16.ema_params, new16.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype('float32')}
