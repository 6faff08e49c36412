"""Shared test fixtures: tiny configs that train in seconds on a CPU."""

import os
import sys
import tempfile

import pytest

# One persistent XLA compilation cache for the whole test session, subprocesses included (they
# inherit the environment): most tests compile the same tiny programs, and XLA's CPU compile of
# a U-Net takes ~10-25 s on 2 cores where a cache hit takes ~1 s. Set before jax is imported.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'ddpm_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import default  # pylint: disable=wrong-import-position


def make_tiny_config(image_size=8, channels=1, batch_size=8):
  """A U-Net of a few thousand parameters over tiny images, T = 100."""
  c = default.get_config()
  c.data.dataset = 'fashion_mnist'
  c.data.image_size = image_size
  c.data.channels = channels
  c.model.ch = 8
  c.model.ch_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.num_groups = 4
  c.model.dropout = 0.1
  c.diffusion.num_timesteps = 100
  c.diffusion.beta_end = 0.2
  c.optim.warmup_steps = 0
  c.optim.lr = 1e-3
  c.optim.ema_decay = 0.9
  c.train.batch_size = batch_size
  c.train.num_steps = 4
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.sample_every = 0
  c.train.num_sample_grid = 4
  c.sample.num = 4
  c.sample.batch_size = 4
  return c


@pytest.fixture
def tiny_config():
  return make_tiny_config()
