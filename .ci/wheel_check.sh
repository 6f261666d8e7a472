#!/usr/bin/env bash
# The package as a user installs it: a wheel built from this checkout, installed into a fresh
# virtualenv in a folder outside the checkout, then every job with the README's commands, run
# from that folder (so nothing is imported from the checkout): make a dataset, pre-train
# `tiny`, evaluate, export, fine-tune offline, and a short online fine-tuning.
#
#   bash .ci/wheel_check.sh            (PYTHON, EXTRAS, CONSTRAINTS, KEEP override the defaults)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
EXTRAS="${EXTRAS:-data,online}"
CONSTRAINTS="${CONSTRAINTS:-$REPO/constraints/pinned.txt}"
WORK="$(mktemp -d /tmp/scaled_ql_wheel.XXXXXX)"
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
# Installed without byte-compiling (--no-compile), so the jobs compile what they import once
# and keep it (Makefile, PIP_INSTALL).
unset PYTHONDONTWRITEBYTECODE
step() { echo; echo "== $*"; }

step "wheel from $REPO"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/scaled_ql-*.whl)"
echo "$WHEEL"
step "fresh virtualenv in $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
CONSTRAINT_ARGS=()
[ -f "$CONSTRAINTS" ] && CONSTRAINT_ARGS=(-c "$CONSTRAINTS")
"$PY" -m pip install --quiet --no-compile "${CONSTRAINT_ARGS[@]}" "${WHEEL}[${EXTRAS}]"
cd "$WORK"
"$PY" - <<'PY'
import scaled_ql, launch
for m in (scaled_ql, launch):
  assert "site-packages" in m.__file__, m.__file__
print("imported from", scaled_ql.__file__)
PY

step "dataset"
"$PY" -m launch.make_dataset --source=ale --games=pong,breakout,freeway,space_invaders --runs=1 \
  --checkpoints_per_run=2 --steps_per_checkpoint=150 --data_dir=data
step "pre-training (tiny)"
"$PY" -m launch.pretrain --config=configs/pretrain.py:tiny --workdir=runs/tiny \
  --config.data.data_dir=data --config.data.pool_frames_per_game=400
step "evaluation"
"$PY" -m launch.evaluate --checkpoint=runs/tiny --episodes=1 --envs_per_game=1 \
  --max_steps_per_episode=50 --baselines=random
step "export"
"$PY" -m launch.export --workdir=runs/tiny --out=runs/tiny/backbone
step "offline fine-tuning"
"$PY" -m launch.finetune --config=configs/finetune.py:offline_cpu --backbone=runs/tiny/backbone \
  --workdir=runs/ft_space_invaders --config.data.data_dir=data --config.num_steps=20 \
  --config.batch_size=32 --config.checkpoint_every=10 --config.log_every=10 \
  --config.data.pool_frames_per_game=400
step "online fine-tuning (short, local replay)"
"$PY" -m launch.finetune --config=configs/finetune.py:online_cpu --backbone=runs/tiny/backbone \
  --workdir=runs/ft_freeway --config.online.env_steps=400 --config.online.min_replay_size=100 \
  --config.batch_size=32 --config.num_steps=60 --config.checkpoint_every=30 \
  --config.log_every=10 --config.online.publish_every=10
test -d runs/ft_freeway/checkpoints && test -d runs/ft_space_invaders/checkpoints
if "$PY" -c "import reverb" 2>/dev/null; then
  step "online fine-tuning (short, Reverb replay and actor processes)"
  "$PY" -m launch.finetune --config=configs/finetune.py:online_cpu --backbone=runs/tiny/backbone \
    --workdir=runs/ft_freeway_reverb --config.online.replay=reverb \
    --config.online.env_steps=400 --config.online.min_replay_size=100 \
    --config.batch_size=32 --config.num_steps=60 --config.checkpoint_every=30 \
    --config.log_every=10 --config.online.publish_every=10
  test -d runs/ft_freeway_reverb/checkpoints
fi
step "wheel check passed: every job ran from the installed package"
