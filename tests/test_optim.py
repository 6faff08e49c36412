"""The optimiser: gradient clipping, Adam with the warm-up schedule, EMA."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ddpm_jax import optim


def optim_config(**kw):
  c = ml_collections.ConfigDict(dict(lr=2e-4, warmup_steps=4, grad_clip=1.0, adam_b1=0.9,
                                     adam_b2=0.999, adam_eps=1e-8, ema_decay=0.9))
  c.update(kw)
  return c


def tree(seed, scale):
  k = jax.random.split(jax.random.PRNGKey(seed), 2)
  return {'a': scale * jax.random.normal(k[0], (3, 5)), 'b': {'c': scale * jax.random.normal(k[1], (7,))}}


@pytest.mark.parametrize('scale', [0.01, 10.0])  # Global norm below and above the threshold.
def test_clip_by_global_norm_matches_optax(scale):
  g = tree(0, scale)
  ours, state = optim.clip_by_global_norm(1.0).update(g, optim.clip_by_global_norm(1.0).init(g))
  want, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
  assert state == optax.EmptyState()
  norm = float(optax.tree.norm(ours))
  assert norm == pytest.approx(min(1.0, float(optax.tree.norm(g))), rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), ours, want)


def test_optimizer_steps_match_optax_chain():
  """make_optimizer == optax's clip_by_global_norm + adam(warm-up) over several steps, with
  the same state layout (so checkpoints carry over)."""
  cfg = optim_config()
  ours = optim.make_optimizer(cfg)
  ref = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adam(optax.linear_schedule(0.0, 2e-4, 4), b1=0.9, b2=0.999, eps=1e-8))
  p_ours = p_ref = tree(1, 1.0)
  s_ours, s_ref = ours.init(p_ours), ref.init(p_ref)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
  for step in range(6):
    g = tree(10 + step, 3.0 if step % 2 else 0.05)
    u, s_ours = ours.update(g, s_ours, p_ours)
    p_ours = optax.apply_updates(p_ours, u)
    u, s_ref = ref.update(g, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
               (p_ours, s_ours), (p_ref, s_ref))
  assert not np.allclose(p_ours['a'], tree(1, 1.0)['a'])  # It really moved.


def test_warmup_schedule_and_no_clipping():
  cfg = optim_config(warmup_steps=100, grad_clip=0.0)
  lr = optim.learning_rate_schedule(cfg)
  assert [float(lr(s)) for s in (0, 50, 100, 200)] == pytest.approx([0.0, 1e-4, 2e-4, 2e-4])
  assert float(optim.learning_rate_schedule(optim_config(warmup_steps=0))(7)) == pytest.approx(2e-4)
  g = tree(2, 100.0)
  tx = optim.make_optimizer(cfg)
  assert len(tx.init(g)) == 1  # Adam only.


def test_ema_update_closed_form():
  ema, params = {'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([3.0, -2.0])}
  out = optim.ema_update(ema, params, 0.75)
  np.testing.assert_allclose(out['w'], 0.75 * ema['w'] + 0.25 * params['w'], rtol=1e-7)


def test_ema_decay_warmup_closed_form():
  # Without warm-up the decay is constant; with it, min(decay, (1 + s) / (10 + s)).
  assert optim.ema_decay_at(0, 0.999, False) == 0.999
  got = [float(optim.ema_decay_at(s, 0.999, True)) for s in (0, 1, 90, 10_000)]
  np.testing.assert_allclose(got, [0.1, 2 / 11, 91 / 100, 0.999], rtol=1e-6)


def test_ema_warmup_forgets_the_initialisation():
  # EMA started at the initial value 1 while the parameter stays at 0: what remains of the
  # initialisation after n updates is the product of the decays, prod (1 + s) / (10 + s) with
  # warm-up (9! n! / (n + 9)!), decay^n without.
  ema_plain = ema_warm = jnp.ones(())
  for s in range(30):
    ema_plain = optim.ema_update(ema_plain, jnp.zeros(()), optim.ema_decay_at(s, 0.995, False))
    ema_warm = optim.ema_update(ema_warm, jnp.zeros(()), optim.ema_decay_at(s, 0.995, True))
  np.testing.assert_allclose(float(ema_warm), np.prod([(1 + s) / (10 + s) for s in range(30)]),
                             rtol=1e-4)
  np.testing.assert_allclose(float(ema_plain), 0.995**30, rtol=1e-5)
  assert float(ema_warm) < 1e-7 < 0.8 < float(ema_plain)
