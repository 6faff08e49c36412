"""diffusers folders in and out: `--init_from=SOURCE` and `python -m ddpm_jax.export`.

A SOURCE is
* a `UNet2DModel` folder: `config.json` and `diffusion_pytorch_model.safetensors` (or the older
  `diffusion_pytorch_model.bin`, read without torch by `ddpm_jax.metrics.torch_pickle`), with
  an optional `scheduler_config.json` beside them (what `export` writes);
* a `DDPMPipeline` folder: `unet/` as above and `scheduler/scheduler_config.json`;
* a Hugging Face Hub id such as `google/ddpm-cifar10-32`, downloaded with `huggingface_hub`
  (only the files above, into its cache) where there is internet.

Reading checks the model's `config.json` and the scheduler's config against our config first
(`diffusers_config`) and reports every difference in one `InteropError`, before any weight is
read or anything written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re

import huggingface_hub
import jax
import numpy as np
from flax import traverse_util
from huggingface_hub import errors as hub_errors
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from ddpm_jax import image_files
from ddpm_jax.interop import InteropError, diffusers_config, unet_names
from ddpm_jax.metrics import torch_pickle

WEIGHTS_SAFETENSORS = 'diffusion_pytorch_model.safetensors'
WEIGHTS_BIN = 'diffusion_pytorch_model.bin'
CONFIG = 'config.json'
SCHEDULER_CONFIG = 'scheduler_config.json'
# What a Hub download fetches, weights in safetensors first (the .bin only when there is none).
_HUB_CONFIGS = ['model_index.json', CONFIG, SCHEDULER_CONFIG, f'unet/{CONFIG}',
                f'scheduler/{SCHEDULER_CONFIG}']
_HUB_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*')


@dataclasses.dataclass(frozen=True)
class Folder:
  """Where a diffusers model's files are: `unet_dir` (config.json + weights) and the scheduler
  config, if any."""
  unet_dir: str
  scheduler_file: str | None


def _read_config(path: str) -> dict:
  """A diffusers config file: a JSON object, or InteropError."""
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise InteropError(f'Cannot read {path}: {e}') from e
  if not isinstance(config, dict):
    raise InteropError(f'{path} is not a diffusers config (a JSON object).')
  return config


def _local_folder(source: str, path: str) -> Folder:
  for unet_dir, sched in ((os.path.join(path, 'unet'),  # A DDPMPipeline folder.
                           os.path.join(path, 'scheduler', SCHEDULER_CONFIG)),
                          (path, os.path.join(path, SCHEDULER_CONFIG))):  # A UNet2DModel folder.
    if os.path.isfile(os.path.join(unet_dir, CONFIG)):
      return Folder(unet_dir, sched if os.path.isfile(sched) else None)
  raise InteropError(f'--init_from={source}: neither a diffusers UNet2DModel folder '
                     f'({CONFIG} + {WEIGHTS_SAFETENSORS}) nor a DDPMPipeline folder (unet/, '
                     'scheduler/).')


def _download(repo_id: str) -> str:
  """The Hub repo `repo_id` in huggingface_hub's cache (configs and one weights file)."""
  weights = [WEIGHTS_SAFETENSORS, f'unet/{WEIGHTS_SAFETENSORS}']
  try:
    path = huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_CONFIGS + weights)
    if not any(os.path.isfile(os.path.join(path, w)) for w in weights):  # Only a .bin there.
      path = huggingface_hub.snapshot_download(
          repo_id, allow_patterns=_HUB_CONFIGS + [WEIGHTS_BIN, f'unet/{WEIGHTS_BIN}'])
  except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as e:
    raise InteropError(f'--init_from={repo_id}: no such local folder, and no such model on the '
                       f'Hugging Face Hub ({type(e).__name__}).') from e
  except Exception as e:  # Offline, unreachable, refused: huggingface_hub raises many types.
    raise InteropError(
        f'--init_from={repo_id}: no such local folder, and the Hugging Face Hub cannot be '
        f'reached to download it ({type(e).__name__}). Where there is internet, run '
        f'`hf download {repo_id} --local-dir {repo_id.split("/")[-1]}` and pass '
        f'--init_from={repo_id.split("/")[-1]} (that folder).') from e
  return path


def resolve(source: str) -> Folder:
  """The files of SOURCE: a local UNet2DModel or DDPMPipeline folder, or a Hub id downloaded
  (raises InteropError, one line, when it is neither or cannot be downloaded)."""
  path = os.path.expanduser(str(source))
  if os.path.isdir(path):
    return _local_folder(source, path)
  if os.path.exists(path):
    raise InteropError(f'--init_from={source} is a file; pass the diffusers folder that holds '
                       f'{CONFIG} and the weights.')
  if not _HUB_ID.fullmatch(str(source)):
    raise InteropError(f'--init_from={source}: no such folder (and not a Hugging Face Hub id '
                       'such as google/ddpm-cifar10-32).')
  return _local_folder(source, _download(str(source)))


def read_state_dict(unet_dir: str) -> dict[str, np.ndarray]:
  """The weights of a UNet2DModel folder as NumPy arrays (safetensors first, else the .bin)."""
  st, bin_ = os.path.join(unet_dir, WEIGHTS_SAFETENSORS), os.path.join(unet_dir, WEIGHTS_BIN)
  try:
    if os.path.isfile(st):
      return load_file(st)
    if os.path.isfile(bin_):
      return dict(torch_pickle.load_state_dict(bin_))
  except Exception as e:  # Truncated or foreign files: safetensors and pickle raise many types.
    raise InteropError(f'Cannot read the weights in {unet_dir}: {type(e).__name__}: {e}') from e
  present = ', '.join(sorted(os.listdir(unet_dir)))
  raise InteropError(f'{unet_dir} has no {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN} (it has: '
                     f'{present}).')


def load_params(source: str, config, expected) -> tuple[dict, Folder]:
  """The parameters of the diffusers model SOURCE (a local folder or a Hub id, see the module
  docstring) for the U-Net of `config`, whose model, diffusion and sampling fields are checked
  against the model's config.json and scheduler config first.

  Returns (params, folder): a nested dict of float32 NumPy arrays shaped like `expected` (our
  parameter tree, arrays or `jax.ShapeDtypeStruct`s, e.g. `Experiment.abstract_state().params`)
  and where the files were. Raises InteropError (one line) when the source cannot be found,
  read, or does not match.
  """
  folder = resolve(source)
  problems = diffusers_config.check_unet_config(
      _read_config(os.path.join(folder.unet_dir, CONFIG)), config)
  if folder.scheduler_file:
    problems += diffusers_config.check_scheduler_config(_read_config(folder.scheduler_file),
                                                        config)
  if problems:  # Every difference in one line, before any weight is read.
    raise InteropError(f'--init_from={source} does not match the config: '
                       + '; '.join(problems) + '. Override those fields (--config.FIELD=VALUE) '
                       'or use the config of that model.')
  state_dict = read_state_dict(folder.unet_dir)
  shapes = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
  flat = unet_names.from_diffusers(state_dict, shapes, len(config.model.ch_mult))
  return traverse_util.unflatten_dict(flat), folder


def place(params, abstract):
  """`params` (NumPy) as global jax.Arrays laid out like `abstract` (`ShapeDtypeStruct`s with
  shardings, e.g. `Experiment.abstract_state().params`), on any number of processes."""
  def put(value, spec):
    value = np.asarray(value, spec.dtype)
    return jax.make_array_from_callback(value.shape, spec.sharding, lambda idx: value[idx])
  return jax.tree.map(put, params, abstract)


def write_folder(params, config, out_dir: str, overwrite: bool = False) -> list[str]:
  """Writes `params` of the U-Net of `config` as a diffusers folder: `config.json`
  (UNet2DModel), `diffusion_pytorch_model.safetensors` and `scheduler_config.json`
  (DDPMScheduler). Both configs are built first, so a config diffusers cannot express fails
  before anything is written. Returns the paths."""
  configs = [diffusers_config.unet_config(config), diffusers_config.scheduler_config(config)]
  names = (CONFIG, WEIGHTS_SAFETENSORS, SCHEDULER_CONFIG)
  taken = [n for n in names if os.path.exists(os.path.join(out_dir, n))]
  if taken and not overwrite:
    raise InteropError(f'{out_dir} already holds {", ".join(taken)}; choose another --out or '
                       'pass --overwrite.')
  flat = traverse_util.flatten_dict(jax.device_get(params))
  state_dict = unet_names.to_diffusers(flat, len(config.model.ch_mult))
  unet_json, sched_json = ((json.dumps(c, indent=2) + '\n').encode() for c in configs)
  contents = (unet_json, safetensors_bytes(state_dict, metadata={'format': 'pt'}), sched_json)
  return [image_files.write_atomic(os.path.join(out_dir, name),
                                   lambda tmp, c=content: pathlib.Path(tmp).write_bytes(c))
          for name, content in zip(names, contents)]


def load_for_experiment(source: str, experiment) -> tuple[object, Folder]:
  """`load_params` for `experiment`'s model, placed as its train state lays out parameters
  (replicated, or split over the mesh's `fsdp` axis)."""
  abstract = experiment.abstract_state().params
  params, folder = load_params(source, experiment.config, abstract)
  return place(params, abstract), folder
