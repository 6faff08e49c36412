"""Train-step throughput of a config: one line with images/s, step time, compile time, memory,
achieved GFLOP/s (XLA cost analysis) and the fraction of the matmul peak measured here.

  python -m benchmarks.train_throughput --config=configs/cifar10.py --batch=8
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from ddpm_jax.experiment import Experiment

flags.DEFINE_string('config', 'configs/cifar10.py', 'Config file.')
flags.DEFINE_integer('batch', 8, 'Global batch size.')
flags.DEFINE_integer('steps', 10, 'Timed steps after warm-up.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.DEFINE_string('dtype', None, 'Compute dtype (config.train.compute_dtype), e.g. bfloat16.')
flags.DEFINE_enum('kernels', None, ['auto', 'xla', 'cpu'],
                  'Kernels backend (config.model.kernels); the config\'s when not given.')
common.define_cpu_preset_flag('train')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.apply_cpu_preset()  # Before JAX creates its CPU client.

  overrides = {'train.batch_size': FLAGS.batch}
  if FLAGS.dtype:
    overrides['train.compute_dtype'] = FLAGS.dtype
  if FLAGS.kernels:
    overrides['model.kernels'] = FLAGS.kernels
  config = common.load_config(FLAGS.config, overrides)
  exp = Experiment.from_config(config)
  state = exp.init_state()
  # Random images in [-1, 1], not zeros (which can run faster than real data).
  batch = jax.device_put(
      jax.random.uniform(jax.random.PRNGKey(1), (FLAGS.batch,) + exp.image_shape,
                         jnp.float32, -1.0, 1.0),
      jax.sharding.NamedSharding(exp.mesh, jax.sharding.PartitionSpec('data')))
  step = exp.jitted_train_step()
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  flops = common.compiled_flops(compiled)

  holder = {'state': state}

  def run():
    holder['state'], metrics = compiled(holder['state'], batch)
    return metrics

  times = common.time_calls(run, FLAGS.steps, FLAGS.warmup)
  med = float(sorted(times)[len(times) // 2])
  achieved = flops / med / 1e9 if flops else float('nan')
  peak = common.matmul_peak_gflops()
  print(f'train_throughput config={FLAGS.config} batch={FLAGS.batch} '
        f'params={exp.num_params():,} device={common.device_name()} jax={jax.__version__} '
        f'cpu_preset={FLAGS.cpu_preset} kernels={exp.model.ops.name} | '
        f'{FLAGS.batch / med:.2f} images/s, {1 / med:.3f} steps/s, step {common.spread(times)} '
        f'over {len(times)} steps, compile {compile_s:.1f} s, '
        f'peak host mem {common.peak_host_memory_gib():.2f} GiB, '
        f'device mem {common.device_memory_gib()}, {achieved:.1f} GFLOP/s '
        f'({flops / FLAGS.batch / 1e9:.2f} GFLOP/image) = {achieved / peak:.0%} of the '
        f'{peak:.0f} GFLOP/s matmul peak', flush=True)


if __name__ == '__main__':
  app.run(main)
