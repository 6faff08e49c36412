"""The DDPM paper's Table 2: reverse-process parameterisation x training objective.

Six runs: the network predicts the posterior mean (`mu`, the paper's mu-tilde baseline) or the
noise (`eps`), trained on
  * the true variational bound L (eq. 5) with a learned diagonal variance,
  * the true variational bound L with a fixed isotropic variance (sigma_t^2 = beta_t),
  * the unweighted MSE of the prediction: ||mu-tilde - mu_theta||^2 for `mu`, and L_simple
    (eq. 14) for `eps`.
The paper reports (CIFAR-10 FID): mu + L learned 23.69, mu + L fixed 13.22, mu + MSE unstable;
eps + L learned unstable, eps + L fixed 13.51, eps + L_simple 3.17.

    python -m ddpm_jax.sweep --config=configs/cifar10.py \
        --sweep=configs/sweeps/ddpm_table2.py --workdir=runs/table2
"""

from ddpm_jax.sweep.spec import product, zip_axes


def get_sweep():
  return product(
      {'diffusion.mean_type': ['mu', 'eps']},
      zip_axes({'diffusion.loss': ['kl', 'kl', 'mse'],
                'diffusion.var_type': ['learned', 'fixedlarge', 'fixedlarge']}))
