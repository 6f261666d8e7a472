#!/usr/bin/env bash
# All workers of a Cloud TPU pod slice run the same command; JAX finds the others itself.
#   launch/run_tpu_pod.sh TPU_NAME ZONE --config=configs/pretrain.py:paper_resnet101 \
#       --workdir=gs://BUCKET/runs/sql101 --config.data.data_dir=gs://BUCKET/tensorflow_datasets
# Assumes the repository is checked out at ~/scaled-ql on every worker and `make setup` plus
# `.venv/bin/pip install -e '.[tpu]'` ran there (see BUILD_NOTES.md).
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE [launch.pretrain flags...]}; zone=${2:?zone}; shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/scaled-ql && .venv/bin/python -m ${MODULE:-launch.pretrain} --distributed_auto${args}"
