#!/usr/bin/env bash
# 4DRL (GRPO) with torchrun and DeepSpeed ZeRO-2 on NUM_GPUS GPUs per node: the original launcher's
# recipe and values (train_4dthinker.sh: the DIFT checkpoint, 8 prompts per device x G 8 completions,
# accumulation 2, 1 epoch, LR 1e-6, beta 0.01, max completion 8192, rewards accuracy 1.0 + format 0.2,
# logging every step, a checkpoint every 100 steps, seed 42, bf16, gradient checkpointing, TensorBoard).
#
#   bash fourdrl/train.sh [fourdrl.train flags, e.g. --max_steps 100 --use_peft]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash fourdrl/train.sh ...   # on node 0; NODE_RANK=1 on node 1
#
# Flags go to `python -m fourdrl.train` after the recipe's, so a flag given here wins over the recipe
# (same names: `python -m fourdrl.train --help` lists them). Settings also come from the environment:
# MODEL DATA OUTPUT_DIR EXP_NAME NUM_GPUS (processes per node) DS_CONFIG LR EPOCHS PROMPTS_PER_DEVICE
# NUM_GENERATIONS GRAD_ACCUM BETA MAX_COMPLETION_LENGTH LOGGING_STEPS SAVE_STEPS PY, and the multi-node
# NNODES NODE_RANK MASTER_ADDR MASTER_PORT (scripts/launch_common.sh); DRY_RUN=1 prints the command and
# runs nothing. Prompts are sharded over all NNODES x NUM_GPUS ranks (each rank gets its own); the
# global batch is PROMPTS_PER_DEVICE x NUM_GENERATIONS x GRAD_ACCUM x NNODES x NUM_GPUS completions.
# OUTPUT_DIR must be a folder all nodes share. Without a visible GPU the same recipe runs NUM_GPUS CPU
# processes (default 2) with gloo and bf16 off (fourdrl/train_cpu.sh: the embedded tiny default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAUNCH_NAME="fourdrl/train.sh"
source "$ROOT/scripts/launch_common.sh"
launch_python
launch_layout
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
for name in PROMPTS_PER_DEVICE NUM_GENERATIONS; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || launch_usage_error "$name must be a positive integer, got '${!name}'"
done

if [ -z "${HAS_CUDA:-}" ]; then
    HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
fi
if [ "$HAS_CUDA" = 1 ]; then
    NUM_GPUS="${NUM_GPUS:-8}"; KIND=GPU; DEVICE_FLAGS=()
else
    NUM_GPUS="${NUM_GPUS:-2}"; KIND=CPU; DEVICE_FLAGS=(--use_cpu)
fi
[[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || launch_usage_error "NUM_GPUS must be a positive integer, got '$NUM_GPUS'"
launch_torchrun "$NUM_GPUS"

CMD=("${TORCHRUN[@]}" -m fourdrl.train
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
    "${DEVICE_FLAGS[@]}"
    "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
    print_command "${CMD[@]}"
    exit 0
fi
RUN_DIR="$(flag_value output_dir "$OUTPUT_DIR" "$@")/$(flag_value exp_name "$EXP_NAME" "$@")"
echo "[fourdrl/train.sh] torchrun, $(launch_describe "$NUM_GPUS" "$KIND") -> $RUN_DIR"
"${CMD[@]}"
echo "[fourdrl/train.sh] final checkpoint: $RUN_DIR/checkpoints"
