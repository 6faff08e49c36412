#!/usr/bin/env bash
# Train (or sample) on every device of this machine.
#   bash launch/local.sh CONFIG WORKDIR [--mode=sample] [KEY=VALUE ...] [--any.other=flag]
# KEY=VALUE pairs become config overrides: train.batch_size=64 -> --config.train.batch_size=64.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh
usage="bash launch/local.sh CONFIG WORKDIR [--mode=sample] [KEY=VALUE ...]"
case "${1:-}" in -h|--help) echo "usage: $usage"; exit 0 ;; esac
[ $# -ge 2 ] || usage_error launch/local.sh "$usage" "expected CONFIG and WORKDIR"
check_args launch/local.sh "$usage" "$1" "$2"
config=$1 workdir=$2
shift 2
args=()
add_overrides launch/local.sh "$@"
exec "$PY" -m ddpm_jax.main --config="$config" --workdir="$workdir" "${args[@]}"
