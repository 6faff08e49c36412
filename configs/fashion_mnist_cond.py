"""The quickstart, class-conditional: Fashion-MNIST's ten labels embedded next to the timestep,
10 % of them dropped in training (the null label) so that sampling can use classifier-free
guidance, `(1 + w) eps(x, t, y) - w eps(x, t)` with w = `sample.guidance_scale`. Sample grids
go through the classes in turn (`sample.label = -1`), or show one class (`sample.label = k`).
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.num_classes = 10
  config.train.label_dropout = 0.1
  config.sample.guidance_scale = 1.0
  return config
