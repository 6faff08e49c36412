"""diffusers import and export (`--init_from`, `python -m ddpm_jax.export`), against diffusers'
own files and outputs: tests/data was written by diffusers 0.42.1 with torch 2.13.0
(tools/make_diffusers_fixture.py); no torch is needed here."""

import io
import contextlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from conftest import ROOT
from configs import default
from ddpm_jax import export, train
from ddpm_jax.experiment import Experiment
from ddpm_jax.interop import InteropError, diffusers, diffusers_config, unet_names
from torch_pickle_writer import save_state_dict

DATA = os.path.join(ROOT, 'tests', 'data')
PIPELINE = os.path.join(DATA, 'diffusers_pipeline')
COND = os.path.join(DATA, 'diffusers_unet_cond')
FIXTURE_FLAGS = ['--config.data.image_size=16', '--config.model.ch=16',
                 '--config.model.ch_mult=(1,2,2)', '--config.model.attn_resolutions=(8,)',
                 '--config.model.num_groups=4']


def pipeline_config():
  """The config of tests/data/diffusers_pipeline (configs/cifar10.py at 16x16, widths
  16/32/32, 4 groups, no dropout)."""
  c = default.get_config()
  c.data.update(image_size=16, channels=3)
  c.model.update(ch=16, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,),
                 num_groups=4, dropout=0.0)
  c.diffusion.var_type = 'fixedlarge'
  return c


def cond_config():
  """The config of tests/data/diffusers_unet_cond: 8x8 grey, 4 classes, learned_range
  variance, v prediction, cosine betas, T = 100, no clipping."""
  c = default.get_config()
  c.data.update(image_size=8, channels=1)
  c.model.update(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_groups=4,
                 num_classes=4)
  c.diffusion.update(var_type='learned_range', mean_type='v', schedule='cosine',
                     num_timesteps=100, loss='hybrid')
  c.sample.clip_denoised = False
  return c


def _relative_error(out, ref):
  return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize('kernels', ['xla', 'cpu'])
@pytest.mark.parametrize('which', ['uncond', 'cond'])
def test_imported_model_computes_diffusers_output(which, kernels):
  # The code path of --init_from (sampling and evaluation call load_for_experiment), with each
  # kernels backend ('cpu' needs a single CPU device).
  if kernels == 'cpu' and (jax.default_backend() != 'cpu' or jax.device_count() != 1):
    pytest.skip('the CPU backend needs a single CPU device')
  config, source = (pipeline_config(), PIPELINE) if which == 'uncond' else (cond_config(), COND)
  config.model.kernels = kernels
  exp = Experiment.from_config(config)
  assert exp.model.ops.name == kernels
  params, folder = diffusers.load_for_experiment(source, exp)
  assert folder.unet_dir.endswith('unet' if which == 'uncond' else 'diffusers_unet_cond')
  data = np.load(os.path.join(DATA, 'diffusers_io.npz'))
  x, t, ref = data[f'{which}_x'], data[f'{which}_t'], data[f'{which}_out']
  y = data[f'{which}_y'] if which == 'cond' else None  # cond: includes the null label 4.
  out = exp.model.apply({'params': params}, x, t, y)
  assert ref.shape == out.shape and np.abs(ref).min() > 0
  assert _relative_error(out, ref) < 1e-5
  for i in range(len(t)):  # Every timestep, t = 0 and T - 1 included.
    assert _relative_error(out[i], ref[i]) < 1e-5, t[i]


def test_import_then_export_gives_the_same_tensors_bit_for_bit(tmp_path):
  config = pipeline_config()
  exp = Experiment.from_config(config)
  params, _ = diffusers.load_params(PIPELINE, config, exp.abstract_state().params)
  paths = diffusers.write_folder(params, config, str(tmp_path / 'out'))
  original = load_file(os.path.join(PIPELINE, 'unet', diffusers.WEIGHTS_SAFETENSORS))
  exported = load_file(paths[1])
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(paths[1]).st_mode & 0o777 == 0o666 & ~umask  # Not safetensors' owner-only.
  assert len(original) == 268 and sorted(exported) == sorted(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    assert exported[key].tobytes() == value.tobytes(), key
  # The configs describe the same model and schedule as the originals.
  with open(os.path.join(PIPELINE, 'unet', 'config.json')) as f:
    unet_cfg = json.load(f)
  with open(paths[0]) as f:
    written = json.load(f)
  assert {k: v for k, v in written.items() if not k.startswith('_')} == {
      k: v for k, v in unet_cfg.items() if not k.startswith('_')}
  with open(os.path.join(PIPELINE, 'scheduler', 'scheduler_config.json')) as f:
    sched = json.load(f)
  with open(paths[2]) as f:
    written = json.load(f)
  assert {k: written[k] for k in diffusers_config.SCHEDULER_DEFAULTS} == {
      k: sched[k] for k in diffusers_config.SCHEDULER_DEFAULTS}
  with pytest.raises(InteropError, match='already holds config.json'):
    diffusers.write_folder(params, config, str(tmp_path / 'out'))


def test_bin_with_older_attention_names_reads_like_safetensors(tmp_path):
  config = pipeline_config()
  expected = Experiment.from_config(config).abstract_state().params
  state = load_file(os.path.join(PIPELINE, 'unet', diffusers.WEIGHTS_SAFETENSORS))
  old = {k.replace('.to_q.', '.query.').replace('.to_k.', '.key.').replace('.to_v.', '.value.')
          .replace('.to_out.0.', '.proj_attn.'): v for k, v in state.items()}
  assert sum('.query.' in k for k in old) == 12  # 6 attention blocks, weight and bias.
  assert not any('.to_q.' in k for k in old)
  folder = tmp_path / 'old'
  folder.mkdir()
  shutil.copy(os.path.join(PIPELINE, 'unet', 'config.json'), folder / 'config.json')
  save_state_dict(str(folder / diffusers.WEIGHTS_BIN), old)
  a, _ = diffusers.load_params(PIPELINE, config, expected)
  b, f = diffusers.load_params(str(folder), config, expected)
  assert f.scheduler_file is None
  flat_a, flat_b = (unet_names.to_diffusers(traverse_util.flatten_dict(p), 3)
                    for p in (a, b))
  assert all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)
  # Weights that do not fit: every missing and unexpected tensor counted, the first few named.
  old.pop('conv_in.bias')
  old.update({f'extra.{i}': np.zeros(1, np.float32) for i in range(8)})
  save_state_dict(str(folder / diffusers.WEIGHTS_BIN), old)
  with pytest.raises(InteropError) as e:
    diffusers.load_params(str(folder), config, expected)
  assert str(e.value) == (
      'The diffusers weights do not fit the config: 1 missing tensors (conv_in.bias); '
      '8 unexpected tensors (extra.0, extra.1, extra.2, extra.3, extra.4, extra.5 and 2 more).')


def _mismatch(config, source=PIPELINE):
  expected = Experiment.from_config(config).abstract_state().params
  with pytest.raises(InteropError) as e:
    diffusers.load_params(source, config, expected)
  message = str(e.value)
  assert '\n' not in message
  return message


def test_mismatches_name_our_field_and_both_values(tmp_path):
  c = pipeline_config()
  c.model.ch_mult = (1, 2, 2, 2)
  c.data.image_size = 32
  c.model.attn_resolutions = (16,)
  msg = _mismatch(c)
  assert ('the diffusers model has block_out_channels=[16, 32, 32], this config '
          '[16, 32, 32, 32] (config.model.ch=16, config.model.ch_mult=(1, 2, 2, 2))') in msg
  assert 'sample_size=16, this config 32 (config.data.image_size=32)' in msg
  c = pipeline_config()
  c.model.attn_resolutions = (16, 8)
  c.diffusion.update(num_timesteps=500, beta_end=0.03, var_type='fixedsmall')
  c.sample.clip_denoised = False
  msg = _mismatch(c)
  assert ("down_block_types=['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'], this config "
          "['AttnDownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'] (config.model.attn_resolutions="
          '(16, 8)') in msg
  assert 'num_train_timesteps=1000, this config 500 (config.diffusion.num_timesteps=500)' in msg
  assert ("variance_type='fixed_large', this config 'fixed_small' "
          "(config.diffusion.var_type='fixedsmall')") in msg
  assert 'clip_sample=True, this config False (config.sample.clip_denoised=False)' in msg
  c = pipeline_config()
  c.diffusion.beta_end = 0.03
  assert ('the diffusers model has linear betas from 0.0001 to 0.02, this config linear betas '
          'from 0.0001 to 0.03 (config.diffusion.schedule, beta_start, beta_end)') in _mismatch(c)
  msg = _mismatch(pipeline_config(), COND)
  assert 'num_class_embeds=5, this config None (config.model.num_classes=0)' in msg
  assert ("prediction_type='v_prediction', this config 'epsilon' "
          "(config.diffusion.mean_type='eps')") in msg
  assert ("out_channels=2, this config 3 (config.data.channels=3, "
          "config.diffusion.var_type='fixedlarge')") in msg
  # What is the paper's network itself, not a config field.
  folder = tmp_path / 'heads'
  shutil.copytree(os.path.join(PIPELINE, 'unet'), folder)
  with open(folder / 'config.json') as f:
    cfg = json.load(f)
  cfg.update(attention_head_dim=8, norm_eps=1e-5)
  del cfg['freq_shift']  # diffusers' default then applies: 0.
  with open(folder / 'config.json', 'w') as f:
    json.dump(cfg, f)
  msg = _mismatch(pipeline_config(), str(folder))
  assert ("the diffusers model has norm_eps=1e-05, ddpm-jax always 1e-06 (the paper's model; "
          'no config key sets it)') in msg
  assert 'attention_head_dim=8' in msg and 'freq_shift=0' in msg


def test_configs_of_the_released_models_match_ours():
  """google/ddpm-{cifar10-32, celebahq-256, church-256, bedroom-256, cat-256} (and the ddpm-ema-*
  twins): their config.json and scheduler_config.json as published."""
  import importlib  # pylint: disable=g-import-not-at-top
  layout = dict(act_fn='silu', attention_head_dim=None, center_input_sample=False,
                downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, in_channels=3,
                layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-06,
                norm_num_groups=32, out_channels=3, time_embedding_type='positional')
  cifar = dict(layout, block_out_channels=[128, 256, 256, 256], sample_size=32,
               down_block_types=['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'],
               up_block_types=['UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'])
  big = dict(layout, block_out_channels=[128, 128, 256, 256, 512, 512], sample_size=256,
             down_block_types=['DownBlock2D'] * 4 + ['AttnDownBlock2D', 'DownBlock2D'],
             up_block_types=['UpBlock2D', 'AttnUpBlock2D'] + ['UpBlock2D'] * 4)
  sched = dict(beta_end=0.02, beta_schedule='linear', beta_start=0.0001, clip_sample=True,
               num_train_timesteps=1000, trained_betas=None)
  released = {'cifar10': (cifar, dict(sched, variance_type='fixed_large'))}
  for name in ('celebahq256', 'lsun_church256', 'lsun_bedroom256', 'lsun_cat256'):
    released[name] = (big, dict(sched, variance_type='fixed_small'))
  for name, (unet, scheduler) in released.items():
    config = importlib.import_module(f'configs.{name}').get_config()
    assert diffusers_config.check_unet_config(unet, config) == [], name
    assert diffusers_config.check_scheduler_config(scheduler, config) == [], name
    # And our export of each config is what it checks against.
    assert diffusers_config.check_unet_config(diffusers_config.unet_config(config), config) == []
    assert diffusers_config.check_scheduler_config(
        diffusers_config.scheduler_config(config), config) == []


def test_other_spellings_of_our_network_match_and_the_rest_is_named():
  config = pipeline_config()
  unet = diffusers_config.unet_config(config)
  same = dict(unet, sample_size=[16, 16], attention_head_dim=32, time_embedding_dim=64,
              num_class_embeds=0, dropout=0.1)
  assert diffusers_config.check_unet_config(same, config) == []
  assert diffusers_config.check_unet_config(dict(unet, attention_head_dim=16), config) == [
      "the diffusers model has attention_head_dim=16, ddpm-jax always None (the paper's model; "
      'no config key sets it)']
  assert diffusers_config.check_unet_config(dict(unet, _class_name='VQModel'), config) == [
      'the diffusers model is a VQModel, not a UNet2DModel']
  config.model.resamp_with_conv = False  # No UNet2DModel computes it: one error, not a list.
  with pytest.raises(InteropError, match='resamp_with_conv=False'):
    diffusers_config.check_unet_config(unet, config)
  config.model.resamp_with_conv = True
  sched = diffusers_config.scheduler_config(config)
  same = dict(sched, variance_type='fixed_large_log', beta_schedule='squaredcos_cap_v2',
              trained_betas=list(np.linspace(1e-4, 0.02, 1000)))
  assert diffusers_config.check_scheduler_config(same, config) == []
  assert diffusers_config.check_scheduler_config(
      dict(sched, beta_schedule='sigmoid', thresholding=True), config) == [
          "the diffusers model has thresholding=True, ddpm-jax always False (the paper's model; "
          'no config key sets it)',
          'the diffusers model has sigmoid betas from 0.0001 to 0.02, this config linear betas '
          'from 0.0001 to 0.02 (config.diffusion.schedule, beta_start, beta_end)']


def test_what_diffusers_cannot_express_is_refused_before_writing(tmp_path):
  for field, value, match in [('model.resamp_with_conv', False, 'resamp_with_conv=False'),
                              ('diffusion.var_type', 'learned', "var_type='learned'"),
                              ('diffusion.mean_type', 'mu', "mean_type='mu'")]:
    c = pipeline_config()
    group, name = field.split('.')
    c[group][name] = value
    with pytest.raises(InteropError, match=match):
      diffusers.write_folder({}, c, str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


def test_class_labels_and_unnamed_schedules_export():
  c = cond_config()
  c.diffusion.update(schedule='const', beta_end=0.01)
  unet, sched = diffusers_config.unet_config(c), diffusers_config.scheduler_config(c)
  assert unet['num_class_embeds'] == 5 and unet['out_channels'] == 2
  assert sched['trained_betas'] == [0.01] * 100 and sched['prediction_type'] == 'v_prediction'
  assert diffusers_config.check_scheduler_config(sched, c) == []


def test_train_imports_resume_wins_and_export_round_trips(tmp_path):
  config = pipeline_config()
  config.train.num_steps = 0  # Import only: checkpoint 0, no data read.
  work = str(tmp_path / 'run')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train_and_evaluate(config, work, progress=False, init_from=PIPELINE)
  assert 'Starting from' in out.getvalue() and 'saved as checkpoint 0' in out.getvalue()
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train_and_evaluate(config, work, progress=False, init_from='nonexistent/model')
  assert 'Resuming from step 0' in out.getvalue()
  assert '--init_from=nonexistent/model is not used' in out.getvalue()
  original = load_file(os.path.join(PIPELINE, 'unet', diffusers.WEIGHTS_SAFETENSORS))
  for which in ('ema', 'raw'):
    paths, step = export.export(config, work, str(tmp_path / which), params=which)
    exported = load_file(paths[1])
    assert step == 0 and sorted(exported) == sorted(original)
    assert all(exported[k].tobytes() == original[k].tobytes() for k in original)
  with pytest.raises(InteropError, match=r'No checkpoint 7 in .*; it has \[0\]'):
    export.export(config, work, str(tmp_path / 'x'), step=7)


def _run(*args, env=None):
  env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
  return subprocess.run([sys.executable, '-m', 'ddpm_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_sample_from_an_imported_model_on_an_empty_workdir(tmp_path):
  cfg = os.path.join(ROOT, 'configs', 'cifar10.py')
  work = tmp_path / 'run'
  out = _run(f'--config={cfg}', f'--workdir={work}', '--mode=sample', f'--init_from={PIPELINE}',
             *FIXTURE_FLAGS, '--config.sample.steps=5', '--config.sample.num=3')
  assert out.returncode == 0, out.stderr[-3000:]
  npz = np.load(work / 'samples' / 'sample_imported_n3_ancestral5.npz')
  assert npz.files == ['arr_0'] and npz['arr_0'].shape == (3, 16, 16, 3)
  assert npz['arr_0'].dtype == np.uint8 and npz['arr_0'].std() > 0


def test_bad_sources_are_one_line_and_write_nothing(tmp_path):
  cfg = os.path.join(ROOT, 'configs', 'cifar10.py')
  work = tmp_path / 'run'
  # A mismatched model: the config's own widths against the fixture's.
  out = _run(f'--config={cfg}', f'--workdir={work}', '--mode=sample', f'--init_from={PIPELINE}')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      f'error: --init_from={PIPELINE} does not match the config: the diffusers model has '
      'block_out_channels=[16, 32, 32], this config [128, 256, 256, 256] (config.model.ch=128, ')
  out = _run(f'--config={cfg}', f'--workdir={work}', f'--init_from={PIPELINE}',
             '--config.train.num_steps=0')
  assert out.returncode == 1 and 'sample_size=16, this config 32 (config.data.image_size=32)' \
      in out.stderr
  assert not work.exists()
  # The Hub, offline (and an unreachable endpoint, should the offline switch be ignored).
  hub = dict(HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), HF_ENDPOINT='http://127.0.0.1:9')
  out = _run(f'--config={cfg}', f'--workdir={work}', '--mode=sample',
             '--init_from=google/ddpm-cifar10-32', env=hub)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  line = out.stderr.strip().splitlines()[-1]
  assert line.startswith('error: --init_from=google/ddpm-cifar10-32: no such local folder, and '
                         'the Hugging Face Hub cannot be reached')
  assert '`hf download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32`' in line
  assert not work.exists()


def test_eval_uses_the_imported_model_when_the_workdir_has_none(tmp_path):
  from ddpm_jax import evaluate  # pylint: disable=g-import-not-at-top
  config = cond_config()
  config.data.dataset = 'fashion_mnist'
  config.evals.bpd.update(num_examples=4, batch_size=4)
  config.evals.fd_fmnist.num_samples = 0
  work = str(tmp_path / 'run')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    rows = evaluate.eval_job(config, work, progress=False, init_from=COND)
  assert 'evaluating --init_from=' in out.getvalue() and len(rows) == 1
  assert rows[0]['step'] == 0 and 0 < rows[0]['bpd'] < 100
  assert os.path.exists(os.path.join(work, 'eval_results.csv'))
