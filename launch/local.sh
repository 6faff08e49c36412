#!/usr/bin/env bash
# Train (or sample) on every device of this machine.
#   bash launch/local.sh CONFIG WORKDIR [--mode=sample] [KEY=VALUE ...] [--any.other=flag]
# KEY=VALUE pairs become config overrides: train.batch_size=64 -> --config.train.batch_size=64.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh
if [ $# -lt 2 ]; then
  echo "usage: bash launch/local.sh CONFIG WORKDIR [--mode=sample] [KEY=VALUE ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
args=()
add_overrides launch/local.sh "$@"
exec "$PY" -m ddpm_jax.main --config="$config" --workdir="$workdir" "${args[@]}"
