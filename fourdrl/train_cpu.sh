#!/usr/bin/env bash
# 4DRL on this machine's CPU: 2 processes, torchrun + DeepSpeed ZeRO-2 over gloo, bf16 off; the recipe
# of fourdrl/train.sh, scaled down, with the embedded tiny default (built on first use):
#   MODEL  .cache/tiny-latent (random-weight DIFT-ready Qwen2.5-VL, scripts/build_tiny_model.py --latent)
#   DATA   .cache/demo_rl_data/rl_data.jsonl (scripts/make_demo_rl_data.py)
# and 2 prompts per process x G 4, accumulation 1, at most 32 new tokens, a checkpoint every 2 steps.
#
#   bash fourdrl/train_cpu.sh [more fourdrl.train flags, e.g. --max_steps 4]
#
# Every fourdrl/train.sh variable can be overridden (MODEL, DATA, OUTPUT_DIR, EXP_NAME, NUM_GPUS = the
# number of CPU processes per node, NNODES NODE_RANK MASTER_ADDR MASTER_PORT, ...). Output:
# $OUTPUT_DIR/$EXP_NAME/checkpoints. DRY_RUN=1 prints the commands (the builds it would run first,
# then training) and writes nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/launch_common.sh"
launch_python
export PY
if [ -z "${MODEL:-}" ]; then
    MODEL="$ROOT/.cache/tiny-latent"
    build_once "$MODEL/config.json" "$PY" "$ROOT/scripts/build_tiny_model.py" --out "$MODEL" --latent
fi
if [ -z "${DATA:-}" ]; then
    DATA="$ROOT/.cache/demo_rl_data/rl_data.jsonl"
    build_once "$DATA" "$PY" "$ROOT/scripts/make_demo_rl_data.py" --out "$(dirname "$DATA")"
fi
export MODEL DATA HAS_CUDA=0 NUM_GPUS="${NUM_GPUS:-2}"
export OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/.cache/4drl}" EXP_NAME="${EXP_NAME:-4dthinker_rl_tiny_cpu}"
export PROMPTS_PER_DEVICE="${PROMPTS_PER_DEVICE:-2}" NUM_GENERATIONS="${NUM_GENERATIONS:-4}" GRAD_ACCUM="${GRAD_ACCUM:-1}"
export MAX_COMPLETION_LENGTH="${MAX_COMPLETION_LENGTH:-32}" SAVE_STEPS="${SAVE_STEPS:-2}" LR="${LR:-1e-5}"
exec bash "$ROOT/fourdrl/train.sh" "$@"
