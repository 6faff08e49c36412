"""The networks and maths under the evaluators (`ddpm_jax.evaluators`): bits/dim of the bound
(`bpd`), the FID Inception-v3 (`inception`, `inception_weights`), FID / IS / KID (`fid_is_kid`),
ddpm-jax's Fashion-MNIST classifier (`fmnist_classifier`) and a torch-free `.pth` reader
(`torch_pickle`)."""
