#!/usr/bin/env bash
# DIFT with DeepSpeed ZeRO-2 on NUM_GPUS GPUs: the original launcher's recipe and values
# (Qwen2.5-VL-3B-Instruct, 1 epoch, LR 1e-5, batch 1 per GPU, accumulation 1, latent 4, loss weights
# 0.1/1.0, logging every 20 steps, a checkpoint every 1000).
#
#   bash dift/train.sh [more dift.train flags, e.g. --max_steps 100]
#
# Settings come from the environment: MODEL DATA OUTPUT_DIR EXP_NAME NUM_GPUS DS_CONFIG LR EPOCHS
# BATCH_SIZE GRAD_ACCUM LATENT_SIZE CE_WEIGHT SIM_WEIGHT LOGGING_STEPS SAVE_STEPS SAVE_TOTAL_LIMIT
# WARMUP_STEPS NUM_WORKERS (DataLoader processes) LAUNCHER (deepspeed | torchrun) PY;
# DRY_RUN=1 prints the command instead of running it.
# Without a visible GPU the same recipe runs NUM_GPUS CPU processes (default 2) under torchrun with
# gloo and bf16 off (see dift/train_cpu.sh for the embedded tiny default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PY:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
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
    LAUNCHER="${LAUNCHER:-deepspeed}"
    DEVICE_FLAGS=()
else
    NUM_GPUS="${NUM_GPUS:-2}"  # CPU processes
    LAUNCHER="${LAUNCHER:-torchrun}"
    DEVICE_FLAGS=(--use_cpu)
fi

case "$LAUNCHER" in
    deepspeed) LAUNCH=("$PY" -m deepspeed.launcher.runner --num_gpus="$NUM_GPUS" --module dift.train) ;;
    torchrun) LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NUM_GPUS" -m dift.train) ;;
    *) echo "LAUNCHER must be deepspeed or torchrun, got '$LAUNCHER'" >&2; exit 2 ;;
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
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
echo "[dift/train.sh] $LAUNCHER on $NUM_GPUS $([ "$HAS_CUDA" = 1 ] && echo GPU || echo CPU) process(es): $EXP_NAME -> $OUTPUT_DIR/$EXP_NAME"
"${CMD[@]}"
echo "[dift/train.sh] final checkpoint: $OUTPUT_DIR/$EXP_NAME/checkpoints"
