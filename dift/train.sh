#!/usr/bin/env bash
# DIFT with DeepSpeed ZeRO-2 on NUM_GPUS GPUs per node: the original launcher's recipe and values
# (Qwen2.5-VL-3B-Instruct, 1 epoch, LR 1e-5, batch 1 per GPU, accumulation 1, latent 4, loss weights
# 0.1/1.0, logging every 20 steps, a checkpoint every 1000).
#
#   bash dift/train.sh [dift.train flags, e.g. --max_steps 100 --learning_rate 2e-5]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash dift/train.sh ...   # on node 0; NODE_RANK=1 on node 1
#
# Flags go to `python -m dift.train` after the recipe's, so a flag given here wins over the recipe
# (same names as dift.train: `--help` there lists them). Settings also come from the environment:
# MODEL DATA OUTPUT_DIR EXP_NAME NUM_GPUS (processes per node) DS_CONFIG LR EPOCHS BATCH_SIZE
# GRAD_ACCUM LATENT_SIZE CE_WEIGHT SIM_WEIGHT LOGGING_STEPS SAVE_STEPS SAVE_TOTAL_LIMIT WARMUP_STEPS
# NUM_WORKERS (DataLoader processes) LAUNCHER (deepspeed | torchrun) PY, and the multi-node NNODES
# NODE_RANK MASTER_ADDR MASTER_PORT (scripts/launch_common.sh); DRY_RUN=1 prints the command and
# runs nothing.
# One node on GPUs runs the deepspeed launcher (the original's); several nodes run torchrun on each
# node (DeepSpeed still trains: dift.train hands its config to the HF Trainer). The global batch is
# BATCH_SIZE x GRAD_ACCUM x NNODES x NUM_GPUS. OUTPUT_DIR must be a folder all nodes share.
# Without a visible GPU the same recipe runs NUM_GPUS CPU processes (default 2) under torchrun with
# gloo and bf16 off (see dift/train_cpu.sh for the embedded tiny default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAUNCH_NAME="dift/train.sh"
source "$ROOT/scripts/launch_common.sh"
launch_python
launch_layout
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

MODEL="${MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}"
DATA="${DATA:-./data/dift_data.jsonl}"
OUTPUT_DIR="${OUTPUT_DIR:-./model/dift}"
EXP_NAME="${EXP_NAME:-4dthinker_stage1_3B_lr1e5_latent4}"
DS_CONFIG="${DS_CONFIG:-$ROOT/configs/ds_zero2.json}"
LR="${LR:-1e-5}"
EPOCHS="${EPOCHS:-1}"
BATCH_SIZE="${BATCH_SIZE:-1}"
GRAD_ACCUM="${GRAD_ACCUM:-1}"
LATENT_SIZE="${LATENT_SIZE:-4}"
CE_WEIGHT="${CE_WEIGHT:-0.1}"
SIM_WEIGHT="${SIM_WEIGHT:-1.0}"
LOGGING_STEPS="${LOGGING_STEPS:-20}"
SAVE_STEPS="${SAVE_STEPS:-1000}"
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-1}"
WARMUP_STEPS="${WARMUP_STEPS:-10}"

if [ -z "${HAS_CUDA:-}" ]; then
    HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
fi
if [ "$HAS_CUDA" = 1 ]; then
    NUM_GPUS="${NUM_GPUS:-8}"
    KIND=GPU
    DEVICE_FLAGS=()
    # The deepspeed launcher starts one node; torchrun joins several.
    if ((NNODES > 1)); then LAUNCHER="${LAUNCHER:-torchrun}"; else LAUNCHER="${LAUNCHER:-deepspeed}"; fi
else
    NUM_GPUS="${NUM_GPUS:-2}"
    KIND=CPU
    LAUNCHER="${LAUNCHER:-torchrun}"
    DEVICE_FLAGS=(--use_cpu)
fi
[[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || launch_usage_error "NUM_GPUS must be a positive integer, got '$NUM_GPUS'"

case "$LAUNCHER" in
    deepspeed)
        ((NNODES == 1)) || launch_usage_error "LAUNCHER=deepspeed runs one node; with NNODES=$NNODES leave" \
            "LAUNCHER unset (torchrun on every node; the DeepSpeed config still applies)"
        LAUNCH=("$PY" -m deepspeed.launcher.runner --num_gpus="$NUM_GPUS" --module dift.train) ;;
    torchrun)
        launch_torchrun "$NUM_GPUS"
        LAUNCH=("${TORCHRUN[@]}" -m dift.train) ;;
    *) launch_usage_error "LAUNCHER must be deepspeed or torchrun, got '$LAUNCHER'" ;;
esac

CMD=("${LAUNCH[@]}"
    --exp_name "$EXP_NAME"
    --model "$MODEL"
    --stage stage1
    --task 4dthinker
    --data_path "$DATA"
    --output_dir "$OUTPUT_DIR"
    --deepspeed_config "$DS_CONFIG"
    --latent_size "$LATENT_SIZE"
    --compress_strategy average
    --epochs "$EPOCHS"
    --learning_rate "$LR"
    --warmup_steps "$WARMUP_STEPS"
    --batch_size "$BATCH_SIZE"
    --gradient_accumulation_steps "$GRAD_ACCUM"
    --ce_loss_weight "$CE_WEIGHT"
    --sim_loss_weight "$SIM_WEIGHT"
    --logging_steps "$LOGGING_STEPS"
    --save_steps "$SAVE_STEPS"
    --save_total_limit "$SAVE_TOTAL_LIMIT"
    "${DEVICE_FLAGS[@]}"
    ${NUM_WORKERS:+--dataloader_num_workers "$NUM_WORKERS"}
    "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
    print_command "${CMD[@]}"
    exit 0
fi
RUN_DIR="$(flag_value output_dir "$OUTPUT_DIR" "$@")/$(flag_value exp_name "$EXP_NAME" "$@")"
echo "[dift/train.sh] $LAUNCHER, $(launch_describe "$NUM_GPUS" "$KIND") -> $RUN_DIR"
"${CMD[@]}"
echo "[dift/train.sh] final checkpoint: $RUN_DIR/checkpoints"
