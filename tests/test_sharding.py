"""Memory features give the same training: FSDP = data parallelism, gradient accumulation = the
full batch, remat = no remat; checkpoints restore onto another device count and mesh.

Cases that compile the train step run in subprocesses (forced CPU devices), with the flags and
the shared persistent compilation cache of `test_multihost` (LLVM -O0 compiles the tiny U-Net
several times faster; both sides of every comparison use the same flags).
"""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import ROOT, make_tiny_config
from ddpm_jax import sharding
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment
from test_multihost import FAST_XLA, shared_cache_dir, small_config, subprocess_env


@pytest.fixture
def cache_dir(tmp_path_factory):
  return shared_cache_dir(tmp_path_factory)


def _run_with_devices(script: str, n_devices: int, *args, cache_dir, timeout=600):
  env = subprocess_env(cache_dir, f'--xla_force_host_platform_device_count={n_devices} '
                       f'{FAST_XLA}',
                       PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'tests'), ROOT]))
  out = subprocess.run([sys.executable, '-c', script, *map(str, args)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
  return out.stdout


def test_mesh_shape_resolution_and_errors():
  assert sharding.resolve_mesh_shape((-1, 1), 8) == (8, 1)
  assert sharding.resolve_mesh_shape((2, -1), 8) == (2, 4)
  assert sharding.resolve_mesh_shape((-1,), 4) == (4, 1)
  assert sharding.resolve_mesh_shape((1, 4), 4) == (1, 4)
  with pytest.raises(ValueError, match=r'mesh_shape=\(3, -1\) does not fit 8 devices'):
    sharding.resolve_mesh_shape((3, -1), 8)
  with pytest.raises(ValueError, match=r'needs 4 devices but there are 8'):
    sharding.resolve_mesh_shape((2, 2), 8)


def test_fsdp_spec_splits_the_largest_divisible_axis():
  assert sharding.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, 'fsdp')
  assert sharding.fsdp_spec((3, 3, 128, 64), 4) == P(None, None, 'fsdp')
  assert sharding.fsdp_spec((3, 3, 6, 10), 4) == P()  # Nothing divisible: replicated.
  assert sharding.fsdp_spec((12,), 4) == P('fsdp')
  assert sharding.fsdp_spec((), 4) == P()
  assert sharding.fsdp_spec((3, 3, 64, 128), 1) == P()
  assert sharding.fsdp_spec((8, 8), 4) == P('fsdp')  # Ties: the first axis.


def test_config_checks_refuse_bad_parallelism_fields():
  from ddpm_jax import config_checks
  c = make_tiny_config()
  c.train.grad_accum_steps = 3
  with pytest.raises(ValueError, match='config.train.grad_accum_steps=3 is invalid'):
    config_checks.validate(c)
  c = make_tiny_config()
  c.train.mesh_shape = (0, 2)
  with pytest.raises(ValueError, match=r'config.train.mesh_shape=\(0, 2\) is invalid'):
    config_checks.validate(c)
  c.train.mesh_shape = (-1, -1)
  with pytest.raises(ValueError, match=r'config.train.mesh_shape=\(-1, -1\) is invalid'):
    config_checks.validate(c)
  mesh = sharding.make_mesh()
  sharding.check_divisible(8, mesh, grad_accum_steps=4)


SINGLE_DEVICE_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from ddpm_jax.experiment import Experiment
    from ddpm_jax.models import create_model
    from test_multihost import small_config

    # Gradient accumulation: 4 micro-batches of 2 = one batch of 8.
    runs = []
    for accum in (1, 4):
      c = small_config()
      c.model.dropout = 0.0  # Dropout masks are drawn per micro-batch (same law, other values).
      c.optim.adam_eps = 1e-3  # Keeps Adam from amplifying summation-order rounding.
      c.train.grad_accum_steps = accum
      runs.append(Experiment.from_config(c))
    state = runs[0].init_state()
    states = [state, jax.tree.map(jnp.copy, state)]  # The step donates its input.
    results = []
    for exp, state in zip(runs, states):
      step = exp.jitted_train_step()
      for i in range(2):
        x = jax.random.uniform(jax.random.PRNGKey(i), (8, 4, 4, 1), minval=-1, maxval=1)
        state, metrics = step(state, x)
      results.append((metrics, state))
    (m1, s1), (m4, s4) = results
    for k in ('loss', 'grad_norm'):
      np.testing.assert_allclose(float(m1[k]), float(m4[k]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    print('ACCUM_OK', float(m1['loss']), float(m4['loss']))

    # Remat: the same loss and gradients, the same parameter names.
    c = small_config()
    plain = create_model(c)
    c.model.remat = True
    remat = create_model(c)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 4, 1))
    t = jnp.array([0, 10, 50, 99])
    params = plain.init({'params': jax.random.PRNGKey(1)}, x, t)['params']
    assert (jax.tree.structure(remat.init({'params': jax.random.PRNGKey(1)}, x, t)['params'])
            == jax.tree.structure(params))
    # Random (not zero-initialised) output layers, so that every parameter gets a gradient.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

    def value_and_grad(model):
      def f(p):
        out = model.apply({'params': p}, x, t, train=True,
                          rngs={'dropout': jax.random.PRNGKey(3)})
        return jnp.mean((out - x) ** 2)
      return jax.jit(jax.value_and_grad(f))(params)

    (l0, g0), (l1, g1) = value_and_grad(plain), value_and_grad(remat)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):  # Fusion rounding.
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g0))
    print('REMAT_OK', float(l0))
''')


def test_gradient_accumulation_equals_full_batch_and_remat_changes_nothing(cache_dir):
  out = _run_with_devices(SINGLE_DEVICE_SCRIPT, 1, cache_dir=cache_dir)
  assert 'ACCUM_OK' in out and 'REMAT_OK' in out


FSDP_SCRIPT = textwrap.dedent('''
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from ddpm_jax import sharding
    from ddpm_jax.checkpointing import Checkpointer
    from ddpm_jax.experiment import Experiment
    from test_multihost import small_config
    assert jax.device_count() == 4, jax.devices()
    workdir = sys.argv[1]
    # The config of test_multihost's runs, so that the data-parallel step is a cache hit.
    c = small_config()
    c.optim.adam_eps = 1e-3
    init = None
    results = {}
    for mesh_shape in ((-1, 1), (2, 2), (1, 4)):
      c.train.mesh_shape = mesh_shape
      exp = Experiment.from_config(c)
      if init is None:
        init = exp.init_state()
      # The same initial state, laid out for this mesh (a copy: the step donates its input).
      state = jax.device_put(jax.tree.map(jnp.copy, init), exp.state_sharding())
      step = exp.jitted_train_step()
      losses = []
      for i in range(3):
        x = jax.random.uniform(jax.random.PRNGKey(i), (8, 4, 4, 1), minval=-1, maxval=1)
        state, m = step(state, sharding.global_batch_from_local(np.asarray(x), exp.mesh))
        losses.append(float(m['loss']))
      results[mesh_shape] = (losses, state)
      kernel = state.params['up_0_block_0']['conv1']['kernel']  # (3, 3, 16, 8)
      mu = state.opt_state[1][0].mu['up_0_block_0']['conv1']['kernel']
      if mesh_shape == (-1, 1):
        assert kernel.sharding.spec == P() and mu.sharding.spec == P()
      else:
        assert kernel.sharding.spec == P(None, None, 'fsdp'), kernel.sharding
        assert mu.sharding.spec == P(None, None, 'fsdp'), mu.sharding
        assert kernel.addressable_shards[0].data.shape == (3, 3, 16 // mesh_shape[1], 8)
        assert state.step.sharding.spec == P()
    (l_dp, s_dp) = results[(-1, 1)]
    for key in ((2, 2), (1, 4)):
      l, s = results[key]
      np.testing.assert_allclose(l, l_dp, rtol=1e-5)
      for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(s_dp.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # Save the FSDP-sharded (2, 2) state; other device counts restore it below.
    _, state = results[(2, 2)]
    ckpt = Checkpointer(workdir)
    ckpt.save(3, state)
    ckpt.close()
    np.savez(workdir + '/expected.npz', *[np.asarray(a) for a in jax.tree.leaves(state)])
    print('FSDP_OK', l_dp)
''')

RESTORE_SCRIPT = textwrap.dedent('''
    import sys
    import jax, numpy as np
    from ddpm_jax.checkpointing import Checkpointer
    from ddpm_jax.experiment import Experiment
    from test_multihost import small_config
    workdir = sys.argv[1]
    expected = np.load(workdir + '/expected.npz')
    expected = [expected[f'arr_{i}'] for i in range(len(expected.files))]
    for mesh_shape in ((-1, 1), (1, -1)):
      c = small_config()
      c.train.mesh_shape = mesh_shape
      exp = Experiment.from_config(c)
      state, step = Checkpointer(workdir).restore_latest_valid(exp.abstract_state())
      assert step == 3 and int(state.step) == 3
      leaves = jax.tree.leaves(state)
      assert len(leaves) == len(expected)
      for a, b in zip(leaves, expected):
        np.testing.assert_array_equal(np.asarray(a), b)
      for a, s in zip(leaves, jax.tree.leaves(exp.state_sharding())):
        assert a.sharding == s, (a.sharding, s)
    print('RESTORE_OK', jax.device_count())
''')


def test_fsdp_equals_data_parallel_and_restores_on_other_device_counts(tmp_path, cache_dir):
  workdir = str(tmp_path)
  assert 'FSDP_OK' in _run_with_devices(FSDP_SCRIPT, 4, workdir, cache_dir=cache_dir)
  # Written by 4 devices with parameters split 2 ways: restore on 2 devices (replicated, and
  # split 2 ways) ...
  assert 'RESTORE_OK 2' in _run_with_devices(RESTORE_SCRIPT, 2, workdir, cache_dir=cache_dir)
  # ... and on this process's single device.
  expected = np.load(os.path.join(workdir, 'expected.npz'))
  exp = Experiment.from_config(small_config(), mesh=sharding.make_mesh(jax.devices()[:1]))
  ckpt = Checkpointer(workdir)
  state, step = ckpt.restore_latest_valid(exp.abstract_state())
  ckpt.close()
  assert step == 3
  for i, a in enumerate(jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), expected[f'arr_{i}'])
