"""The CPU backend's attention (`ddpm_jax.kernels.attention`): `jax.nn.dot_product_attention`
in value and gradient for one head, and a NumPy softmax(q k^T / sqrt(C)) v."""

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.kernels import attention


def _qkv(shape, seed=0):
  return [jax.random.normal(k, shape) for k in jax.random.split(jax.random.PRNGKey(seed), 3)]


def test_one_head_equals_jax_and_numpy_in_value_and_gradient():
  q, k, v = _qkv((2, 16, 1, 8))
  got = attention.dot_product_attention(q, k, v)
  want = jax.nn.dot_product_attention(q, k, v)
  assert got.shape == want.shape == (2, 16, 1, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  qn, kn, vn = (np.asarray(a[:, :, 0], np.float64) for a in (q, k, v))
  logits = np.einsum('bic,bjc->bij', qn, kn) / np.sqrt(8)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(got[:, :, 0], np.einsum('bij,bjc->bic', w / w.sum(-1, keepdims=True),
                                                     vn), rtol=1e-5, atol=1e-6)
  ct = jax.random.normal(jax.random.PRNGKey(9), got.shape)
  loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v) * ct))
  grads = jax.grad(loss(attention.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_other_calls_are_jax_own():
  q, k, v = _qkv((2, 6, 2, 4), seed=1)
  np.testing.assert_array_equal(attention.dot_product_attention(q, k, v),
                                jax.nn.dot_product_attention(q, k, v))
  q, k, v = _qkv((2, 6, 1, 4), seed=2)
  np.testing.assert_array_equal(attention.dot_product_attention(q, k, v, is_causal=True),
                                jax.nn.dot_product_attention(q, k, v, is_causal=True))
