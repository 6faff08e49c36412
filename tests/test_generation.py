"""Classifier-free guidance of the generation chain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, generation, schedules
from test_diffusion import convert_model_output

S = schedules.make_schedule('linear', 100, beta_end=0.2)


@pytest.mark.parametrize('var_type', ['fixedlarge', 'learned_range'])
def test_guidance_on_any_parameterisation_is_eps_guidance(var_type):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  xt = jax.random.normal(keys[0], (4, 2, 2, 1))
  t = jnp.array([0, 10, 50, 99], jnp.int32)
  eps_c, eps_u = (jax.random.normal(k, xt.shape) for k in keys[1:])
  var = jnp.full_like(xt, 0.3)
  w = 2.5
  want = (1 + w) * eps_c - w * eps_u
  for mean_type in diffusion.MEAN_TYPES:
    conv = lambda e, m=mean_type: convert_model_output(S, e, xt, t, 'eps', m)
    cond, uncond = conv(eps_c), conv(eps_u)
    if var_type == 'learned_range':
      cond = jnp.concatenate([cond, var], -1)
      uncond = jnp.concatenate([uncond, -var], -1)
    out = generation.guided_output(cond, uncond, w, var_type)
    mean_out, var_out = diffusion.split_model_output(out, var_type)
    got = convert_model_output(S, mean_out, xt, t, mean_type, 'eps')
    np.testing.assert_allclose(got, want, atol=2e-2 if mean_type == 'mu' else 2e-3,
                               err_msg=mean_type)
    if var_out is not None:
      np.testing.assert_array_equal(var_out, var)  # The conditional variance.
