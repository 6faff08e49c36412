#!/usr/bin/env bash
# A Cloud TPU VM (a single host like v3-8, or a multi-host pod slice like v4-32): create it, copy
# this repository to every worker and install it, train on all workers at once, delete it.
#
#   bash launch/tpu_pod.sh create
#   bash launch/tpu_pod.sh setup
#   bash launch/tpu_pod.sh train CONFIG WORKDIR [--mode=sample] [KEY=VALUE ...] [--flag ...]
#   bash launch/tpu_pod.sh ssh 'COMMAND'           # the same command on every worker
#   bash launch/tpu_pod.sh delete
#
# Settings come from the environment (defaults in brackets):
#   TPU_NAME [ddpm-jax]  ZONE [us-central2-b]  ACCELERATOR [v4-32]
#   TPU_VERSION [tpu-ubuntu2204-base]  PROJECT [gcloud's default]  SPOT [0; 1 = spot VM]
#   REMOTE_DIR [ddpm-jax, in each worker's home]
# e.g. ACCELERATOR=v3-8 ZONE=europe-west4-a TPU_VERSION=tpu-vm-base bash launch/tpu_pod.sh create
#
# `train` runs `python -m ddpm_jax.main --distributed` on every worker (`--worker=all`);
# jax.distributed finds the other workers from the TPU metadata. WORKDIR must be one directory
# that every worker sees: a gs:// bucket path (checkpoints are written there directly by every
# worker; process 0 writes its logs, TensorBoard files and sample grids with local file APIs, so
# prefer a gcsfuse mount such as /gcs/BUCKET/run for those), or an NFS/Filestore mount. A
# preempted (spot) VM sends SIGTERM: the run checkpoints; rerun `train` to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh

TPU_NAME=${TPU_NAME:-ddpm-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-ddpm-jax}
SPOT=${SPOT:-0}
JAX_VERSION=$(sed -n 's/^jax==//p' requirements.txt)

gcloud_tpu() {
  local project=()
  [ -n "${PROJECT:-}" ] && project=(--project="$PROJECT")
  gcloud compute tpus tpu-vm "$@" --zone="$ZONE" "${project[@]}"
}

on_all_workers() {  # Runs the command string $1 on every worker.
  gcloud_tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

usage() {
  sed -n '2,25p' "$0" >&2
  exit 2
}

[ $# -ge 1 ] || usage
action=$1
shift
case "$action" in
  create)
    spot=()
    [ "$SPOT" = 1 ] && spot=(--spot)
    gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$TPU_VERSION" \
      "${spot[@]}"
    ;;
  setup)
    # The working tree (tracked and untracked, not ignored files), not only the last commit.
    archive=$(mktemp /tmp/ddpm-jax.XXXXXX.tar.gz)
    git ls-files -co --exclude-standard -z | tar czf "$archive" --null -T -
    gcloud_tpu scp "$archive" "$TPU_NAME:ddpm-jax.tar.gz" --worker=all
    rm -f "$archive"
    # Python >= 3.11 for the pinned requirements: the system one if recent enough, else uv's.
    on_all_workers "set -e; mkdir -p $REMOTE_DIR; tar xzf ddpm-jax.tar.gz -C $REMOTE_DIR; \
      cd $REMOTE_DIR; \
      if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
        python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==$JAX_VERSION'; \
      else \
        command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; \
        ~/.local/bin/uv venv -q --python 3.11 .venv && \
        ~/.local/bin/uv pip install -q --python .venv/bin/python -r requirements.txt 'jax[tpu]==$JAX_VERSION'; \
      fi; \
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'"
    ;;
  train)
    [ $# -ge 2 ] || usage
    check_args launch/tpu_pod.sh "bash launch/tpu_pod.sh train CONFIG WORKDIR [--mode=sample] [KEY=VALUE ...]" "$1" "$2"
    config=$1 workdir=$2
    shift 2
    args=(--config="$config" --workdir="$workdir" --distributed)
    add_overrides launch/tpu_pod.sh "$@"
    # DDPM_MODULE=ddpm_jax.sweep: one sweep member (`ddpm_jax.sweep --launcher=tpu` prints these).
    on_all_workers "cd $REMOTE_DIR && .venv/bin/python -m ${DDPM_MODULE:-ddpm_jax.main} $(printf '%q ' "${args[@]}")"
    ;;
  ssh)
    [ $# -ge 1 ] || usage
    on_all_workers "cd $REMOTE_DIR && $*"
    ;;
  delete)
    gcloud_tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    usage
    ;;
esac
