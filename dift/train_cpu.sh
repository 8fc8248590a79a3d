#!/usr/bin/env bash
# DIFT on this machine's CPU: 2 processes, torchrun + DeepSpeed ZeRO-2 over gloo, bf16 off; the
# recipe of dift/train.sh with the embedded tiny default (built on first use):
#   MODEL  .cache/tiny-qwen2.5-vl (random-weight Qwen2.5-VL, scripts/build_tiny_model.py)
#   DATA   .cache/demo_dift_data/dift_data.jsonl (scripts/make_demo_dift_data.py)
#
#   bash dift/train_cpu.sh [more dift.train flags, e.g. --max_steps 4]
#
# Every dift/train.sh variable can be overridden (MODEL, DATA, OUTPUT_DIR, EXP_NAME, NUM_GPUS = the
# number of CPU processes per node, NNODES NODE_RANK MASTER_ADDR MASTER_PORT, ...); flags go to
# `python -m dift.train`. Output: $OUTPUT_DIR/$EXP_NAME/checkpoints. DRY_RUN=1 prints the commands
# (the builds it would run first, then training) and writes nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/launch_common.sh"
launch_python
export PY

if [ -z "${MODEL:-}" ]; then
    MODEL="$ROOT/.cache/tiny-qwen2.5-vl"
    build_once "$MODEL/config.json" "$PY" "$ROOT/scripts/build_tiny_model.py" --out "$MODEL"
fi
if [ -z "${DATA:-}" ]; then
    DATA="$ROOT/.cache/demo_dift_data/dift_data.jsonl"
    build_once "$DATA" "$PY" "$ROOT/scripts/make_demo_dift_data.py" --out "$(dirname "$DATA")"
fi
export MODEL DATA
export HAS_CUDA=0 LAUNCHER="${LAUNCHER:-torchrun}" NUM_GPUS="${NUM_GPUS:-2}"
export EXP_NAME="${EXP_NAME:-4dthinker_stage1_tiny_cpu}"
export LR="${LR:-1e-4}" WARMUP_STEPS="${WARMUP_STEPS:-1}" LOGGING_STEPS="${LOGGING_STEPS:-1}" SAVE_STEPS="${SAVE_STEPS:-2}"
exec bash "$ROOT/dift/train.sh" "$@"
