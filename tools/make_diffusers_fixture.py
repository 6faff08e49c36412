"""Makes diffusers models with random weights for ddpm-jax's interop tests, with diffusers itself.

torch and diffusers are not ddpm-jax dependencies: install them in a virtual environment of
their own (torch's CPU wheel; a plain `torch` would pull GBs of CUDA packages), then run this
script with that environment's Python from the repository root:

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 diffusers==0.42.1
  /tmp/torchvenv/bin/python tools/make_diffusers_fixture.py fixture tests/data

`fixture DIR` writes the committed test fixture (about 2 MB):
  DIR/diffusers_pipeline/   a `DDPMPipeline` folder (model_index.json, unet/, scheduler/): a
                            `UNet2DModel` in the DDPM layout, 16x16x3, widths 16/32/32,
                            attention at 8x8 only, 2 res blocks; linear betas, T = 1000,
                            fixed_large, epsilon prediction, safetensors weights.
  DIR/diffusers_unet_cond/  a class-conditional `UNet2DModel` folder with the older
                            `diffusion_pytorch_model.bin` and a `scheduler_config.json` beside it:
                            8x8x1, 4 classes + the null label (`num_class_embeds` 5), a learned
                            variance (2 output channels, learned_range), v prediction, cosine
                            betas, T = 100.
  DIR/diffusers_io.npz      for each model (prefixes `uncond_`, `cond_`): a fixed input batch
                            `x` (NHWC), timesteps `t`, labels `y` (cond only) and diffusers'
                            output `out` (NHWC), float32.
Every weight is random and non-zero, including those the paper initialises to zero.

`cifar10 DIR` writes `google/ddpm-cifar10-32`'s `DDPMPipeline` layout and configs with random
non-zero weights (35.7M parameters, 143 MB; not committed).

`io MODEL OUT.npz` writes a fixed batch (`x` NHWC, timesteps `t` = 0, 1, T/2, T-1, labels `y`
for a class-conditional model) and diffusers' output `out` (NHWC) for any diffusers folder, to
compare with ddpm-jax's network on the same model.

`compare REF OUT` loads two diffusers folders (a pipeline or a `UNet2DModel` folder, e.g. one
imported into ddpm-jax and exported back with `python -m ddpm_jax.export`) with
`UNet2DModel.from_pretrained` and `DDPMScheduler.from_pretrained`, and prints whether every
tensor is bit for bit the same, the largest differences, whether the forward passes agree and
the scheduler's betas and variance type.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

# The paper's U-Net as diffusers' UNet2DModel expresses it (google/ddpm-* configs).
DDPM_LAYOUT = dict(
    center_input_sample=False, time_embedding_type='positional', flip_sin_to_cos=False,
    freq_shift=1, downsample_padding=0, mid_block_scale_factor=1, act_fn='silu',
    attention_head_dim=None, norm_eps=1e-6)


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Every parameter random and non-zero: weights ~ N(0, 1 / fan_in), GroupNorm scales
  1 + N(0, 0.2^2), biases N(0, 0.1^2), embeddings N(0, 1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith('bias'):
        value = 0.1 * noise
      elif p.ndim == 1:  # GroupNorm weight.
        value = 1.0 + 0.2 * noise
      elif 'class_embedding' in name:
        value = noise
      else:
        value = noise / np.sqrt(np.prod(p.shape[1:]))
      value[value == 0] = 1e-3
      p.copy_(value)


def _forward(unet: UNet2DModel, x_nhwc: np.ndarray, t: np.ndarray, y=None) -> np.ndarray:
  with torch.no_grad():
    out = unet(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2), torch.from_numpy(t),
               class_labels=None if y is None else torch.from_numpy(y)).sample
  return out.permute(0, 2, 3, 1).numpy()


def _io(unet: UNet2DModel, seed: int, t, y=None) -> dict:
  rng = np.random.default_rng(seed)
  c, s = unet.config.in_channels, unet.config.sample_size
  x = rng.standard_normal((len(t), s, s, c)).astype(np.float32)
  t = np.asarray(t, np.int64)
  out = {'x': x, 't': t, 'out': _forward(unet, x, t, y)}
  if y is not None:
    out['y'] = y
  return out


def make_fixture(out_dir: str) -> None:
  torch.manual_seed(0)
  unet = UNet2DModel(
      sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32),
      layers_per_block=2, down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'), norm_num_groups=4,
      **DDPM_LAYOUT).eval()
  randomize(unet, seed=1)
  scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                            beta_schedule='linear', variance_type='fixed_large',
                            clip_sample=True, prediction_type='epsilon')
  DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(
      os.path.join(out_dir, 'diffusers_pipeline'))
  arrays = {f'uncond_{k}': v for k, v in _io(unet, 2, [0, 1, 500, 999]).items()}

  cond = UNet2DModel(
      sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16),
      layers_per_block=1, down_block_types=('AttnDownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'AttnUpBlock2D'), norm_num_groups=4, num_class_embeds=5,
      **DDPM_LAYOUT).eval()
  randomize(cond, seed=3)
  cond_dir = os.path.join(out_dir, 'diffusers_unet_cond')
  cond.save_pretrained(cond_dir, safe_serialization=False)
  DDPMScheduler(num_train_timesteps=100, beta_schedule='squaredcos_cap_v2',
                variance_type='learned_range', clip_sample=False,
                prediction_type='v_prediction').save_pretrained(cond_dir)
  y = np.array([0, 3, 4, 2], np.int64)  # 4 = the null label.
  arrays.update({f'cond_{k}': v for k, v in _io(cond, 4, [0, 1, 50, 99], y).items()})
  np.savez(os.path.join(out_dir, 'diffusers_io.npz'), **arrays)
  print(f'Wrote {out_dir}/diffusers_pipeline, diffusers_unet_cond, diffusers_io.npz '
        f'({sum(p.numel() for p in unet.parameters()):,} and '
        f'{sum(p.numel() for p in cond.parameters()):,} parameters)')


def make_cifar10(out_dir: str) -> None:
  """google/ddpm-cifar10-32's configs (model and scheduler) with random weights."""
  unet = UNet2DModel(
      sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
      layers_per_block=2,
      down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
      norm_num_groups=32, **DDPM_LAYOUT).eval()
  randomize(unet, seed=5)
  scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                            beta_schedule='linear', variance_type='fixed_large',
                            clip_sample=True)
  DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out_dir)
  print(f'Wrote {out_dir} ({sum(p.numel() for p in unet.parameters()):,} parameters)')


def _load(path: str):
  sub = os.path.join(path, 'unet')
  unet_dir = sub if os.path.isdir(sub) else path
  sched = os.path.join(path, 'scheduler')
  sched_dir = sched if os.path.isdir(sched) else path
  return UNet2DModel.from_pretrained(unet_dir).eval(), DDPMScheduler.from_pretrained(sched_dir)


def compare(ref: str, out: str) -> bool:
  (a, sa), (b, sb) = _load(ref), _load(out)
  da, db = a.state_dict(), b.state_dict()
  same_keys = sorted(da) == sorted(db)
  equal = [k for k in da if k in db and torch.equal(da[k], db[k])]
  max_abs = max(float((da[k] - db[k]).abs().max()) for k in da if k in db)
  x = np.random.default_rng(0).standard_normal(
      (2, a.config.sample_size, a.config.sample_size, a.config.in_channels)).astype(np.float32)
  t = np.array([10, 900])
  y = None if a.config.num_class_embeds is None else np.array([0, 1])
  fa, fb = _forward(a, x, t, y), _forward(b, x, t, y)
  print(json.dumps({
      'tensors': len(da), 'same_names': same_keys, 'bit_identical': len(equal),
      'max_abs_difference': max_abs, 'forward_max_abs_difference': float(np.abs(fa - fb).max()),
      'betas_equal': bool(torch.equal(sa.betas, sb.betas)),
      'variance_type': [sa.config.variance_type, sb.config.variance_type],
      'clip_sample': [sa.config.clip_sample, sb.config.clip_sample],
      'prediction_type': [sa.config.prediction_type, sb.config.prediction_type]}, indent=1))
  return same_keys and len(equal) == len(da)


def write_io(model_dir: str, out_path: str) -> None:
  unet, scheduler = _load(model_dir)
  n = scheduler.config.num_train_timesteps
  y = None if unet.config.num_class_embeds is None else np.arange(4) % unet.config.num_class_embeds
  arrays = _io(unet, 6, [0, 1, n // 2, n - 1], y)
  np.savez(out_path, **arrays)
  print(f'Wrote {out_path}: x {arrays["x"].shape}, t {arrays["t"].tolist()}, out '
        f'{arrays["out"].shape}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  sub.add_parser('fixture').add_argument('out_dir')
  sub.add_parser('cifar10').add_argument('out_dir')
  p = sub.add_parser('io')
  p.add_argument('model_dir')
  p.add_argument('out_path')
  p = sub.add_parser('compare')
  p.add_argument('reference')
  p.add_argument('other')
  args = parser.parse_args(argv)
  if args.command == 'fixture':
    make_fixture(args.out_dir)
  elif args.command == 'cifar10':
    make_cifar10(args.out_dir)
  elif args.command == 'io':
    write_io(args.model_dir, args.out_path)
  else:
    return 0 if compare(args.reference, args.other) else 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
