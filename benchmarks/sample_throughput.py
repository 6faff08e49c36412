"""Sampler throughput: the whole reverse chain in one jit against the bare forward pass.

Prints two lines: the chain (images/s, chain time, per-step time) and the forward pass alone,
with the chain's per-step overhead over the bare forward pass (target: under 5 %).

  python -m benchmarks.sample_throughput --config=configs/cifar10.py --batch=8 --steps=1000
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from ddpm_jax import generation
from ddpm_jax.experiment import Experiment

flags.DEFINE_string('config', 'configs/cifar10.py', 'Config file.')
flags.DEFINE_integer('batch', 8, 'Images per chain.')
flags.DEFINE_integer('steps', 1000, 'Length of the chain (num_timesteps of the schedule).')
flags.DEFINE_integer('repeats', 3, 'Timed chains.')
flags.DEFINE_integer('forward_repeats', 20, 'Timed bare forward passes.')
flags.DEFINE_enum('kernels', None, ['auto', 'xla', 'cpu'],
                  'Kernels backend (config.model.kernels); the config\'s when not given.')
common.define_cpu_preset_flag('inference')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.apply_cpu_preset()  # Before JAX creates its CPU client.

  overrides = {'diffusion.num_timesteps': FLAGS.steps}
  if FLAGS.kernels:
    overrides['model.kernels'] = FLAGS.kernels
  config = common.load_config(FLAGS.config, overrides)
  exp = Experiment.from_config(config)
  params = exp.init_state().params
  # Non-zero output layers so that the chain does real arithmetic.
  params = jax.tree.map(lambda p: p + 1e-3, params)
  key = jax.random.PRNGKey(0)

  chain = generation.make_sample_fn(exp, FLAGS.batch)
  t0 = time.perf_counter()
  chain_c = chain.lower(params, key).compile()
  compile_s = time.perf_counter() - t0
  chain_t = common.time_calls(lambda: chain_c(params, key), FLAGS.repeats, warmup=1)

  # Random images in [-1, 1] and timesteps, not zeros (which can run faster than real data).
  x = jax.random.uniform(jax.random.PRNGKey(1), (FLAGS.batch,) + exp.image_shape, jnp.float32,
                         -1.0, 1.0)
  t = jax.random.randint(jax.random.PRNGKey(2), (FLAGS.batch,), 0, FLAGS.steps)
  fwd = jax.jit(lambda p, x, t: exp.model.apply({'params': p}, x, t, train=False))
  fwd_c = fwd.lower(params, x, t).compile()
  fwd_t = common.time_calls(lambda: fwd_c(params, x, t), FLAGS.forward_repeats)
  flops = common.compiled_flops(fwd_c)

  chain_med = float(sorted(chain_t)[len(chain_t) // 2])
  fwd_med = float(sorted(fwd_t)[len(fwd_t) // 2])
  per_step = chain_med / FLAGS.steps
  peak = common.matmul_peak_gflops()
  head = (f'config={FLAGS.config} batch={FLAGS.batch} device={common.device_name()} '
          f'jax={jax.__version__} cpu_preset={FLAGS.cpu_preset} kernels={exp.model.ops.name} |')
  print(f'sample_chain {head} {FLAGS.batch / chain_med:.3f} images/s, {FLAGS.steps}-step chain '
        f'{chain_med:.2f} s (n={len(chain_t)}), {per_step * 1e3:.1f} ms/step, compile '
        f'{compile_s:.1f} s, peak host mem {common.peak_host_memory_gib():.2f} GiB, device mem '
        f'{common.device_memory_gib()}', flush=True)
  achieved = flops / fwd_med / 1e9 if flops else float('nan')
  print(f'sample_forward {head} {FLAGS.batch / fwd_med:.2f} images/s, forward '
        f'{common.spread(fwd_t)} (n={len(fwd_t)}), {achieved:.1f} GFLOP/s '
        f'({flops / FLAGS.batch / 1e9:.2f} GFLOP/image) = {achieved / peak:.0%} of the '
        f'{peak:.0f} GFLOP/s matmul peak; chain overhead per step over the bare forward: '
        f'{(per_step / fwd_med - 1):+.1%}', flush=True)


if __name__ == '__main__':
  app.run(main)
