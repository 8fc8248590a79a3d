#!/usr/bin/env bash
# DIFT on one GPU, plain python (no DeepSpeed): the original single-GPU launcher's values
# (Qwen2.5-VL-7B-Instruct, 1 epoch, LR 1e-5, batch 1, accumulation 8, latent 4, loss weights
# 0.1/1.0, logging every step, a checkpoint every 1000 steps).
#
#   bash dift/train_single_gpu.sh [dift.train flags, e.g. --max_steps 100 --learning_rate 2e-5]
#
# Flags go to `python -m dift.train` after the recipe's (same names; a flag given here wins).
# Settings also come from the environment: MODEL DATA OUTPUT_DIR EXP_NAME GPU LR EPOCHS BATCH_SIZE
# GRAD_ACCUM LATENT_SIZE CE_WEIGHT SIM_WEIGHT LOGGING_STEPS SAVE_STEPS SAVE_TOTAL_LIMIT WARMUP_STEPS
# NUM_WORKERS (DataLoader processes) PY;
# DRY_RUN=1 prints the command and runs nothing. Without a GPU it trains on the CPU (bf16 off).
# One process on one node: dift/train.sh runs several GPUs and several nodes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAUNCH_NAME="dift/train_single_gpu.sh"
source "$ROOT/scripts/launch_common.sh"
launch_python
[ "${NNODES:-1}" = 1 ] || launch_usage_error "one GPU on one node; use dift/train.sh for NNODES=$NNODES"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-${GPU:-0}}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

MODEL="${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}"
DATA="${DATA:-./data/dift_data.jsonl}"
OUTPUT_DIR="${OUTPUT_DIR:-./model/dift}"
EXP_NAME="${EXP_NAME:-4dthinker_stage1_7B_single_gpu}"

CMD=("$PY" -m dift.train
    --exp_name "$EXP_NAME"
    --model "$MODEL"
    --stage stage1
    --task 4dthinker
    --data_path "$DATA"
    --output_dir "$OUTPUT_DIR"
    --latent_size "${LATENT_SIZE:-4}"
    --compress_strategy average
    --epochs "${EPOCHS:-1}"
    --learning_rate "${LR:-1e-5}"
    --warmup_steps "${WARMUP_STEPS:-10}"
    --batch_size "${BATCH_SIZE:-1}"
    --gradient_accumulation_steps "${GRAD_ACCUM:-8}"
    --ce_loss_weight "${CE_WEIGHT:-0.1}"
    --sim_loss_weight "${SIM_WEIGHT:-1.0}"
    --logging_steps "${LOGGING_STEPS:-1}"
    --save_steps "${SAVE_STEPS:-1000}"
    --save_total_limit "${SAVE_TOTAL_LIMIT:-1}"
    ${NUM_WORKERS:+--dataloader_num_workers "$NUM_WORKERS"}
    "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
    print_command "${CMD[@]}"
    exit 0
fi
"${CMD[@]}"
echo "[dift/train_single_gpu.sh] final checkpoint:" \
    "$(flag_value output_dir "$OUTPUT_DIR" "$@")/$(flag_value exp_name "$EXP_NAME" "$@")/checkpoints"
