"""Command line: a ddpm-jax checkpoint as a diffusers folder.

  python -m ddpm_jax.export --config=configs/cifar10.py --workdir=runs/cifar10 --out=DIR \
      [--step=N] [--params=ema|raw] [--overwrite]

writes DIR/config.json (`UNet2DModel`), DIR/diffusion_pytorch_model.safetensors and
DIR/scheduler_config.json (`DDPMScheduler` with the config's betas, variance, prediction type
and clipping), so that

  unet = diffusers.UNet2DModel.from_pretrained(DIR)
  scheduler = diffusers.DDPMScheduler.from_pretrained(DIR)
  pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)

compute our network's function and sample with our chain. A class-conditional model exports
with `num_class_embeds = num_classes + 1`: label `num_classes` is the null label of
classifier-free guidance. What diffusers cannot express (average-pool resampling, ddpm-jax's
log-variance `learned` output, the `mu` parameterisation) is refused with one line before
anything is written. The checkpoint is opened read-only, so exporting next to a running trainer
is safe.
"""

from absl import flags
from ml_collections import config_flags

from ddpm_jax import cli, runtime, sharding
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.experiment import Experiment
from ddpm_jax.interop import InteropError, diffusers, diffusers_config

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined only when it runs (the library function `export`
  imports without them, next to other command lines' flags)."""
  config_flags.DEFINE_config_file('config', None, 'The config the run was trained with.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The run whose checkpoint to export.')
  flags.DEFINE_string('out', None, 'Folder to write the diffusers files into.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
  flags.DEFINE_enum('params', 'ema', ['ema', 'raw'], 'EMA parameters (what sampling uses) or '
                    'the raw trained parameters.')
  flags.DEFINE_bool('overwrite', False, 'Replace diffusers files already in --out.')
  flags.mark_flags_as_required(['config', 'workdir', 'out'])


def export(config, workdir: str, out: str, step: int | None = None, params: str = 'ema',
           overwrite: bool = False) -> tuple[list[str], int]:
  """Writes checkpoint `step` (default: the newest) of `workdir` as a diffusers folder `out`;
  returns (the paths written, the step)."""
  experiment = Experiment.from_config(config, mesh=sharding.make_mesh())  # Validates config.
  diffusers_config.unet_config(config)  # What diffusers cannot express fails here, first.
  diffusers_config.scheduler_config(config)
  checkpointer = Checkpointer(workdir, read_only=True, config=config)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise InteropError(f'No checkpoint in {checkpointer.directory}: nothing to export.')
    known = checkpointer.all_steps() + checkpointer.preemption_steps()
    if step not in known:
      raise InteropError(f'No checkpoint {step} in {workdir}; it has {sorted(known)}.')
    state = checkpointer.restore(experiment.abstract_state(), step)  # CheckpointError: 1 line.
  finally:
    checkpointer.close()
  chosen = state.ema_params if params == 'ema' else state.params
  return diffusers.write_folder(chosen, config, out, overwrite=overwrite), step


def main():
  runtime.setup('inference')
  paths, step = export(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.step, FLAGS.params,
                       FLAGS.overwrite)
  print(f'Exported checkpoint {step} ({FLAGS.params} parameters) of {FLAGS.workdir}: '
        f'{", ".join(paths)}. Load it with diffusers.UNet2DModel.from_pretrained({FLAGS.out!r}) '
        f'and diffusers.DDPMScheduler.from_pretrained({FLAGS.out!r}).')


if __name__ == '__main__':
  _define_flags()
  cli.run(main, arguments=False)
