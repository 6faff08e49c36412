"""Every objective of the ablations: loss x mean x variance types, min-SNR weighting, importance
sampling of t and class-conditional training with label dropout."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config
from ddpm_jax import diffusion, objectives, schedules
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment
from ddpm_jax.models import create_model
from test_diffusion import _example, x0_to_model_output

S = schedules.make_schedule('linear', 100, beta_end=0.2)
S1000 = schedules.make_schedule('linear', 1000)
COMBOS = list(itertools.product(objectives.LOSS_TYPES, diffusion.MEAN_TYPES,
                                diffusion.VAR_TYPES))


def _batch(config, seed=0):
  shape = (config.train.batch_size, config.data.image_size, config.data.image_size,
           config.data.channels)
  x = jax.random.uniform(jax.random.PRNGKey(seed), shape, minval=-1, maxval=1)
  return jnp.round((x + 1) * 127.5) / 127.5 - 1


def test_every_loss_mean_and_var_type_gives_a_finite_loss_and_gradient():
  # All 48 combinations through the objective (`training_losses`, exactly what the train step
  # differentiates), with gradients w.r.t. the network output; the train step itself is run
  # for a covering subset below (a jitted U-Net step per combination would cost ~10 s each).
  x0 = _batch(make_tiny_config())
  t = jnp.array([0, 1, 2, 10, 30, 50, 80, 99], jnp.int32)
  noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  xt = diffusion.q_sample(S, x0, t, noise)
  for loss_type, mean_type, var_type in COMBOS:
    channels = 2 if var_type in diffusion.LEARNED_VAR_TYPES else 1
    out = 0.1 * jax.random.normal(jax.random.PRNGKey(2), x0.shape[:-1] + (channels,))
    kw = dict(mean_type=mean_type, var_type=var_type, loss_type=loss_type, min_snr_gamma=0.0)

    def f(o):
      return jnp.mean(objectives.training_losses(S, o, x0, xt, t, noise, **kw)['loss'])

    loss, grad = jax.value_and_grad(f)(out)
    name = f'{loss_type}/{mean_type}/{var_type}'
    assert np.isfinite(float(loss)) and float(loss) > 0, name
    assert np.all(np.isfinite(np.asarray(grad))), name
    assert float(jnp.abs(grad[..., :1]).max()) > 0, name  # The mean output always learns.
    if channels == 2:  # The variance learns from L_vlb only.
      assert (float(jnp.abs(grad[..., 1:]).max()) > 0) == (loss_type != 'mse'), name


def _run_steps(config, batches):
  exp = Experiment.from_config(config)
  state = exp.init_state()
  step = exp.jitted_train_step()
  init_params = jax.tree.map(np.asarray, state.params)  # The step donates the state.
  for batch in batches:
    state, metrics = step(state, batch)
  assert int(state.step) == len(batches)
  for k, v in metrics.items():
    assert np.isfinite(float(v)), (k, v)
  return exp, state, metrics, step, init_params


# The real jitted train step (one compile each, ~10-20 s on 2 cores) for a covering set: with
# tests/test_train_step.py (mse / eps / fixedlarge) every loss, mean and variance type runs.
# Each also carries one of the optional features: min-SNR weighting, importance sampling of t,
# class-conditional training.


def test_train_step_mse_x0_fixedsmall_with_min_snr_weighting():
  c = make_tiny_config()
  c.diffusion.update(loss='mse', mean_type='x0', var_type='fixedsmall', min_snr_gamma=5.0)
  exp, _, metrics, _, _ = _run_steps(c, [_batch(c)])
  assert exp.model.out_ch == 1 and set(metrics) >= {'loss', 'grad_norm', 'lr'}


def test_train_step_kl_v_learned_range_with_importance_sampling(tmp_path):
  c = make_tiny_config()
  c.diffusion.update(loss='kl', mean_type='v', var_type='learned_range',
                     importance_sampling=True)
  exp, state, metrics, _, _ = _run_steps(c, [_batch(c, 0), _batch(c, 1)])
  assert exp.model.out_ch == 2 and 'vlb' in metrics
  counts = np.asarray(state.loss_history['counts'])
  assert state.loss_history['losses'].shape == (100, 10)
  assert counts.sum() == 2 * c.train.batch_size and counts.max() <= 10
  losses = np.asarray(state.loss_history['losses'])
  assert np.all(losses[counts == 0] == 0) and np.all(losses[counts > 0, 0] > 0)
  # The history is part of the checkpoint.
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, state)
  ckpt.wait()
  restored, restored_step = ckpt.restore_latest_valid(exp.abstract_state())
  ckpt.close()
  assert restored_step == 2
  np.testing.assert_array_equal(restored.loss_history['counts'], counts)
  np.testing.assert_array_equal(restored.loss_history['losses'], losses)


def test_train_step_hybrid_mu_learned_class_conditional_with_label_dropout():
  c = make_tiny_config()
  c.diffusion.update(loss='hybrid', mean_type='mu', var_type='learned')
  c.model.num_classes = 3
  c.train.label_dropout = 0.5
  labels = jnp.array([0, 0, 1, 1, 0, 1, 0, 1], jnp.int32)  # Class 2 never appears.
  # Zero-initialised layers: step 1 moves only conv_out, step 2 the blocks' conv2, and step 3
  # is the first whose gradient reaches the timestep and label embeddings.
  batches = [{'image': _batch(c, i), 'label': labels} for i in range(3)]
  exp, state, metrics, step, init_params = _run_steps(c, batches)
  assert exp.model.out_ch == 2 and {'mse', 'vlb'} <= set(metrics)
  emb0 = np.asarray(init_params['label_emb']['embedding'])
  emb1 = np.asarray(state.params['label_emb']['embedding'])
  assert emb0.shape == (4, 32)  # 3 classes + the null label, width 4 * ch.
  changed = [not np.allclose(a, b) for a, b in zip(emb0, emb1)]
  # Seen classes and the null label (dropped labels) learn; the unseen class gets no gradient.
  assert changed == [True, True, False, True]
  with pytest.raises(ValueError, match='labelled batches'):
    step(state, _batch(c))


def test_config_checks_of_the_objective_fields():
  c = make_tiny_config()
  c.diffusion.min_snr_gamma = 5.0
  c.diffusion.mean_type = 'mu'
  with pytest.raises(ValueError, match='config.diffusion.min_snr_gamma'):
    Experiment.from_config(c)
  c = make_tiny_config()
  c.diffusion.importance_sampling = True
  with pytest.raises(ValueError, match="config.diffusion.importance_sampling.*loss='kl'"):
    Experiment.from_config(c)
  c = make_tiny_config()
  c.sample.guidance_scale = 2.0
  with pytest.raises(ValueError, match='config.sample.guidance_scale'):
    Experiment.from_config(c)
  c = make_tiny_config()
  c.sample.steps = 101
  with pytest.raises(ValueError, match='config.sample.steps'):
    Experiment.from_config(c)


# ---------------------------------------------------------------------------------------------
# Importance sampling of t.


def test_loss_history_fills_then_keeps_the_last_ten():
  h = objectives.init_loss_history(5, history=3)
  h = objectives.update_loss_history(h, jnp.array([1, 1, 4]), jnp.array([1.0, 2.0, 7.0]))
  np.testing.assert_array_equal(h['counts'], [0, 2, 0, 0, 1])
  np.testing.assert_array_equal(h['losses'][1], [1, 2, 0])
  h = objectives.update_loss_history(h, jnp.array([1, 1, 1]), jnp.array([3.0, 4.0, 5.0]))
  np.testing.assert_array_equal(h['counts'][1], 3)
  np.testing.assert_array_equal(h['losses'][1], [3, 4, 5])  # Oldest dropped, in batch order.
  assert objectives.init_loss_history(1000)['losses'].shape == (1000, 10)


def test_importance_probabilities_and_weights():
  h = objectives.init_loss_history(4, history=2)
  np.testing.assert_allclose(objectives.importance_probs(h), 0.25)  # Uniform until warm.
  h = objectives.update_loss_history(h, jnp.array([0, 0, 1, 1, 2, 2]), jnp.ones(6))
  np.testing.assert_allclose(objectives.importance_probs(h), 0.25)  # t = 3 has no history yet.
  h = objectives.update_loss_history(h, jnp.array([3, 3, 0, 0]), jnp.array([3.0, 4.0, 2., 2.]))
  # sqrt(mean L^2): t0: 2, t1: 1, t2: 1, t3: sqrt(12.5).
  w = np.array([2.0, 1.0, 1.0, np.sqrt(12.5)])
  p = 0.999 * w / w.sum() + 0.001 / 4
  np.testing.assert_allclose(objectives.importance_probs(h), p, rtol=1e-6)
  t, weights = objectives.sample_timesteps_importance(jax.random.PRNGKey(0), h, 200_000)
  freq = np.bincount(np.asarray(t), minlength=4) / 200_000
  np.testing.assert_allclose(freq, p, atol=0.005)
  np.testing.assert_allclose(weights, 1 / (4 * p[np.asarray(t)]), rtol=1e-5)
  # The weighted loss is unbiased for the uniform-t mean of the per-t losses.
  losses = jnp.array([2.0, 1.0, 1.0, 3.5])
  assert float(jnp.mean(losses[t] * weights)) == pytest.approx(float(losses.mean()), rel=0.01)


# ---------------------------------------------------------------------------------------------
# Class-conditional training (classifier-free guidance).


def test_conditional_model_embeds_labels_with_a_null_label():
  c = make_tiny_config()
  c.model.update(num_classes=3, ch_mult=(1,), attn_resolutions=())  # Fewer ops: a fast test.
  model = create_model(c)
  x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
  params = jax.jit(model.init)({'params': jax.random.PRNGKey(0)}, x, t)['params']
  assert params['label_emb']['embedding'].shape == (4, 32)  # 3 classes + null, width 4 * ch.
  params = jax.tree.map(lambda p: p + 0.01, params)  # Make the zero-initialised output live.
  out = jax.jit(lambda lab: model.apply({'params': params}, x, t, lab))
  assert not np.allclose(out(jnp.array([0, 0])), out(jnp.array([1, 1])))
  no_label = jax.jit(lambda: model.apply({'params': params}, x, t))()
  np.testing.assert_allclose(no_label, out(jnp.array([3, 3])), rtol=1e-5, atol=1e-6)
  c.model.num_classes = 0
  with pytest.raises(ValueError, match='num_classes = 0'):
    create_model(c).init({'params': jax.random.PRNGKey(0)}, x, t, jnp.array([0, 0]))


# ---------------------------------------------------------------------------------------------
# The losses in closed form (T = 1000).


def test_simple_loss_eq14():
  noise = jnp.ones((3, 2, 2, 1))
  x0 = jnp.zeros_like(noise)
  t = jnp.array([0, 10, 500])
  xt = diffusion.q_sample(S1000, x0, t, noise)
  loss = lambda out, mean_type='eps': objectives.simple_loss(S1000, out, x0, xt, t, noise,
                                                             mean_type)
  np.testing.assert_allclose(loss(noise), 0.0)
  out = noise.at[1].set(3.0)
  np.testing.assert_allclose(loss(out), [0.0, 4.0, 0.0])
  np.testing.assert_allclose(loss(out, 'x0'), [1, 9, 1])
  # v = sqrt(abar) eps - sqrt(1 - abar) x_0 = sqrt(abar) here.
  v = jnp.sqrt(S1000.alphas_cumprod[t])[:, None, None, None] * noise
  np.testing.assert_allclose(loss(v, 'v'), 0.0, atol=1e-12)
  np.testing.assert_allclose(loss(v + 0.5, 'v'), 0.25, rtol=1e-6)


def test_min_snr_weighting_makes_every_target_an_x0_loss():
  x0, eps, t, xt = _example()
  gamma = 5.0
  abar = np.asarray(S1000.alphas_cumprod)[np.asarray(t)]
  snr = abar / (1 - abar)
  pred_x0 = x0 + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x0.shape)
  x0_mse = np.mean((np.asarray(pred_x0) - np.asarray(x0)) ** 2, axis=(1, 2, 3))
  for mean_type in ('eps', 'x0', 'v'):
    out = x0_to_model_output(S1000, pred_x0, xt, t, mean_type)
    loss = objectives.training_losses(S1000, out, x0, xt, t, eps, mean_type=mean_type,
                                      loss_type='mse', min_snr_gamma=gamma)['loss']
    np.testing.assert_allclose(loss, np.minimum(snr, gamma) * x0_mse, rtol=2e-3, atol=1e-7,
                               err_msg=mean_type)
  with pytest.raises(ValueError, match='min-SNR'):
    objectives.min_snr_weight(S1000, t, 'mu', gamma)


def test_hybrid_loss_is_mse_plus_lambda_T_vlb_and_vlb_only_trains_the_variance():
  x0, eps, t, xt = _example()
  out = jax.random.normal(jax.random.PRNGKey(4), x0.shape[:-1] + (4,))
  kw = dict(mean_type='eps', var_type='learned_range')
  hyb = objectives.training_losses(S1000, out, x0, xt, t, eps, loss_type='hybrid', **kw)
  mse = objectives.training_losses(S1000, out, x0, xt, t, eps, loss_type='mse', **kw)['loss']
  vlb = objectives.training_losses(S1000, out, x0, xt, t, eps, loss_type='kl', **kw)['loss']
  np.testing.assert_allclose(hyb['loss'], mse + 0.001 * 1000 * vlb, rtol=1e-5)
  g_hyb = jax.grad(lambda o: jnp.sum(objectives.training_losses(
      S1000, o, x0, xt, t, eps, loss_type='hybrid', **kw)['loss']))(out)
  g_mse = jax.grad(lambda o: jnp.sum(objectives.training_losses(
      S1000, o, x0, xt, t, eps, loss_type='mse', **kw)['loss']))(out)
  np.testing.assert_allclose(g_hyb[..., :2], g_mse[..., :2], rtol=1e-6)  # Mean: stop-gradient.
  assert np.all(np.asarray(g_mse[..., 2:]) == 0)
  assert np.any(np.asarray(g_hyb[..., 2:]) != 0)  # The variance learns from L_vlb only.
