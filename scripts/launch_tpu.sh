#!/usr/bin/env bash
# Cloud TPU pod-slice launcher for tensorcache (docs/tpu.md explains every step).
#
#   scripts/launch_tpu.sh create      # make the slice
#   scripts/launch_tpu.sh setup       # copy this checkout to every worker, pip install
#   scripts/launch_tpu.sh train       # start training on every worker (rerun = resume)
#   scripts/launch_tpu.sh logs        # follow worker 0's log
#   scripts/launch_tpu.sh stop        # stop training on every worker
#   scripts/launch_tpu.sh delete      # delete the slice
#
# Settings come from the environment (defaults below); DRY_RUN=1 prints the gcloud
# commands instead of running them. NOT RUN AGAINST REAL TPUS: written from the Cloud TPU
# documentation, checked here only with `bash -n` and DRY_RUN=1.
set -euo pipefail

: "${TPU_NAME:=tensorcache}"
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR_TYPE:=v4-32}"            # e.g. v5litepod-8, v5p-8 (docs/tpu.md: from a compile to a launch)
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"  # v4; v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
: "${PROJECT:=}"                          # empty: gcloud's configured project
: "${SPOT:=0}"                            # 1: a Spot slice (cheaper, preemptible)
: "${CONFIG:=configs/base.py:small,tc}"
: "${WORKDIR:=/mnt/shared/tensorcache/run}"  # a path every worker sees (NFS / gcsfuse)
: "${REMOTE_DIR:=tensor-cache}"           # checkout location on the workers (under ~)
: "${EXTRA_ARGS:=}"                       # more --config.* overrides
: "${PYTHON_PKG:=python3.11}"             # tensorcache needs Python >= 3.11; the TPU images
                                          # ship 3.10 (Ubuntu 22.04), so a venv is made with this
VENV='~/tensorcache-venv'
: "${DRY_RUN:=0}"

# Arrays that may be empty are expanded as ${a[@]+"${a[@]}"}: `set -u` rejects "${a[@]}" of an
# empty array before bash 4.4 (macOS ships 3.2).
project_flag=()
[[ -n "$PROJECT" ]] && project_flag=(--project="$PROJECT")

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

on_all_workers() {  # on_all_workers 'shell command'
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${project_flag[@]+"${project_flag[@]}"} \
    --worker=all --command="$1"
}

case "${1:-}" in
  create)
    spot=()
    [[ "$SPOT" == 1 ]] && spot=(--spot)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" ${project_flag[@]+"${project_flag[@]}"} \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
    ;;
  setup)
    # Ship the committed tree (git archive: no build outputs, no local checkpoints).
    archive="$(mktemp -d)/tensorcache.tar.gz"
    run git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":tensorcache.tar.gz \
      --zone="$ZONE" ${project_flag[@]+"${project_flag[@]}"} --worker=all
    on_all_workers "set -e; sudo apt-get update -q; \
      sudo apt-get install -y -q $PYTHON_PKG $PYTHON_PKG-venv; \
      rm -rf ~/$REMOTE_DIR; mkdir -p ~/$REMOTE_DIR; \
      tar -xzf ~/tensorcache.tar.gz -C ~/$REMOTE_DIR; cd ~/$REMOTE_DIR; \
      $PYTHON_PKG -m venv $VENV; $VENV/bin/pip install -U pip; \
      $VENV/bin/pip install -e '.[tpu]'; \
      $VENV/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count())'"
    ;;
  train)
    # Every worker runs the same command; jax.distributed.initialize() (train.distributed)
    # finds the other workers from the TPU metadata. nohup: training outlives the ssh.
    on_all_workers "cd ~/$REMOTE_DIR && nohup $VENV/bin/python -m tensorcache.main \
      --config=$CONFIG --workdir=$WORKDIR --config.train.distributed=True $EXTRA_ARGS \
      < /dev/null > ~/tensorcache-train.log 2>&1 &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${project_flag[@]+"${project_flag[@]}"} \
      --worker=0 --command="tail -n 100 -f ~/tensorcache-train.log"
    ;;
  stop)
    # [p]ython: the pattern does not match the remote shell that carries it.
    on_all_workers "pkill -INT -f '[p]ython -m tensorcache.main' || true"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" ${project_flag[@]+"${project_flag[@]}"} --quiet
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
