#!/usr/bin/env bash
# Installs what ddpm-jax needs on a Debian/Ubuntu machine with Python 3.11 or later ($PYTHON,
# default python3):
#   - Debian's `dataset-fashion-mnist` (the quickstart's data, read offline) when apt is usable;
#   - a virtual environment `.venv` in the repository root with requirements.txt.
# Idempotent: a second run only checks. Usage: bash launch/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Every pinned package needs Python 3.11 or later; an older one would fail deep inside pip.
PYTHON=${PYTHON:-python3}
check='import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 11))'
if ! version=$("$PYTHON" -c "$check" 2>/dev/null); then
  echo "setup: ddpm-jax needs Python 3.11 or later; $PYTHON is" \
       "${version:+Python }${version:-not found} (set PYTHON=python3.11 or newer)." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 || \
      { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "$@" >/dev/null; }
  else
    echo "setup: cannot apt-get install $* (no root/sudo); continuing without it." >&2
    return 1
  fi
}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing Debian's dataset-fashion-mnist"
  apt_install dataset-fashion-mnist || \
    echo "setup: Fashion-MNIST will be downloaded on first use instead (needs internet)." >&2
fi

if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "setup: installing python3-venv"
  apt_install python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
echo "setup: ready ($(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)'))"
# Compiles the CPU backend's oneDNN convolutions now rather than in the first run (a few
# seconds).
echo "setup: $(.venv/bin/python -c 'from ddpm_jax.kernels import onednn; print(onednn.describe())' 2>/dev/null)"
