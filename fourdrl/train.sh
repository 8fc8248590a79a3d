#!/usr/bin/env bash
# 4DRL (GRPO) with torchrun and DeepSpeed ZeRO-2 on NUM_GPUS GPUs: the original launcher's recipe and
# values (train_4dthinker.sh: the DIFT checkpoint, 8 prompts per device x G 8 completions, accumulation
# 2, 1 epoch, LR 1e-6, beta 0.01, max completion 8192, rewards accuracy 1.0 + format 0.2, logging every
# step, a checkpoint every 100 steps, seed 42, bf16, gradient checkpointing, TensorBoard).
#
#   bash fourdrl/train.sh [more fourdrl.train flags, e.g. --max_steps 100 --use_peft]
#
# Settings come from the environment: MODEL DATA OUTPUT_DIR EXP_NAME NUM_GPUS DS_CONFIG LR EPOCHS
# PROMPTS_PER_DEVICE NUM_GENERATIONS GRAD_ACCUM BETA MAX_COMPLETION_LENGTH LOGGING_STEPS SAVE_STEPS PY;
# DRY_RUN=1 prints the command instead of running it. Without a visible GPU the same recipe runs
# NUM_GPUS CPU processes (default 2) with gloo and bf16 off (see fourdrl/train_cpu.sh for the tiny default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PY:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

MODEL="${MODEL:-./model/dift/checkpoints}"
DATA="${DATA:-./data/4drl_data_filtered.jsonl}"
OUTPUT_DIR="${OUTPUT_DIR:-./model/4drl}"
EXP_NAME="${EXP_NAME:-4dthinker_rl_grpo}"
DS_CONFIG="${DS_CONFIG:-$ROOT/configs/ds_zero2_grpo.json}"
LR="${LR:-1e-6}"
EPOCHS="${EPOCHS:-1}"
PROMPTS_PER_DEVICE="${PROMPTS_PER_DEVICE:-8}"
NUM_GENERATIONS="${NUM_GENERATIONS:-8}"
GRAD_ACCUM="${GRAD_ACCUM:-2}"
BETA="${BETA:-0.01}"
MAX_COMPLETION_LENGTH="${MAX_COMPLETION_LENGTH:-8192}"
LOGGING_STEPS="${LOGGING_STEPS:-1}"
SAVE_STEPS="${SAVE_STEPS:-100}"

if [ -z "${HAS_CUDA:-}" ]; then
    HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
fi
if [ "$HAS_CUDA" = 1 ]; then NUM_GPUS="${NUM_GPUS:-8}"; else NUM_GPUS="${NUM_GPUS:-2}"; fi  # CPU: processes

CMD=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NUM_GPUS" -m fourdrl.train
    --model_name_or_path "$MODEL"
    --data_path "$DATA"
    --output_dir "$OUTPUT_DIR"
    --exp_name "$EXP_NAME"
    --deepspeed "$DS_CONFIG"
    --reward_funcs accuracy format
    --reward_weights 1.0 0.2
    --num_generations "$NUM_GENERATIONS"
    --per_device_train_batch_size "$((PROMPTS_PER_DEVICE * NUM_GENERATIONS))"
    --gradient_accumulation_steps "$GRAD_ACCUM"
    --num_train_epochs "$EPOCHS"
    --learning_rate "$LR"
    --beta "$BETA"
    --max_completion_length "$MAX_COMPLETION_LENGTH"
    --logging_steps "$LOGGING_STEPS"
    --save_steps "$SAVE_STEPS"
    --seed 42
    --data_seed 42
    --gradient_checkpointing
    "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
echo "[fourdrl/train.sh] torchrun on $NUM_GPUS $([ "$HAS_CUDA" = 1 ] && echo GPU || echo CPU) process(es): $EXP_NAME -> $OUTPUT_DIR/$EXP_NAME"
"${CMD[@]}"
echo "[fourdrl/train.sh] final checkpoint: $OUTPUT_DIR/$EXP_NAME/checkpoints"
