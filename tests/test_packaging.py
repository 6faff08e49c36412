"""Packaging: pyproject.toml's pins are requirements.txt's, its extras name jax's own at the
pinned version, and what the installed package reads at run time ships with it."""

import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def _normalise(requirement: str) -> str:
  name, rest = re.match(r'\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)', requirement).groups()
  return re.sub(r'[-_.]+', '-', name).lower() + re.sub(r'\s+', '', rest).replace("'", '"')


def test_requirements_txt_is_the_pinned_cpu_install():
  """requirements.txt (what setup.sh and CI install) = dependencies + [cpu] + [test]."""
  project = _pyproject()['project']
  extras = project['optional-dependencies']
  want = project['dependencies'] + extras['cpu'] + extras['test']
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    lines = [line.split('#')[0].strip() for line in f]
  got = [line for line in lines if line]
  assert sorted(map(_normalise, got)) == sorted(map(_normalise, want))
  assert all('==' in r for r in got)


def test_accelerator_extras_are_jax_own_at_the_pinned_version():
  project = _pyproject()['project']
  extras = project['optional-dependencies']
  jax_pin = next(r for r in project['dependencies'] if r.startswith('jax=='))
  version = jax_pin.split('==')[1]
  for extra in ('cuda12', 'cuda13', 'tpu'):
    assert extras[extra] == [f'jax[{extra}]=={version}']
  # oneDNN (and with it the compile step) only on x86-64 Linux, only in the [cpu] extra.
  assert all('onednn' not in r for r in project['dependencies'])
  assert all('platform_machine == "x86_64"' in r and 'sys_platform == "linux"' in r
             for r in extras['cpu'])
  assert project['requires-python'] == '>=3.11'


def test_files_read_at_run_time_are_package_data():
  """Every non-Python file under ddpm_jax/ that git tracks is declared as package data."""
  data = _pyproject()['tool']['setuptools']['package-data']
  declared = {os.path.join(*package.split('.'), name)
              for package, names in data.items() for name in names}
  tracked = subprocess.run(['git', 'ls-files', 'ddpm_jax', 'configs'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
  needed = {p for p in tracked if not p.endswith('.py')}
  assert needed <= declared
  assert os.path.exists(os.path.join(ROOT, 'LICENSE'))


def test_setup_script_checks_the_python_version_first(tmp_path):
  """launch/setup.sh stops with one line on a Python older than 3.11, before installing."""
  fake = tmp_path / 'python3'
  fake.write_text('#!/bin/sh\necho 3.10\nexit 1\n')   # What Ubuntu 22.04's python3 answers.
  fake.chmod(0o755)
  result = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'setup.sh')],
                          env={**os.environ, 'PYTHON': str(fake)}, capture_output=True,
                          text=True, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f'setup: ddpm-jax needs Python 3.11 or later; {fake} is Python 3.10 (set '
      'PYTHON=python3.11 or newer).']


def test_cli_reads_a_config_from_another_directory(tmp_path):
  """From a directory that is not the repository (ddpm_jax and configs importable, as an
  install makes them), `--config=/abs/path/configs/x.py` loads, and its values are checked:
  a wrong backend name is one error naming the key."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  config = os.path.join(ROOT, 'configs', 'fashion_mnist.py')
  out = subprocess.run([sys.executable, '-m', 'ddpm_jax.main', f'--config={config}',
                        f'--workdir={tmp_path / "run"}', '--config.model.kernels=gpu'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, check=False)
  assert out.returncode != 0
  assert "config.model.kernels='gpu' is invalid: expected one of 'auto', 'xla', 'cpu'" in (
      out.stderr)
