#!/usr/bin/env bash
# DSR evaluation of one checkpoint, data-parallel: NUM_GPUS processes on each of NNODES nodes (one
# per GPU; CPU processes where there is none). Question i goes to rank i mod world size, each rank
# appends its own part file, and rank 0 merges them into the results file in benchmark order.
#
#   bash evaluation/eval.sh --model_path CKPT --benchmark_path B.parquet --video_root VIDEOS \
#       --output_file results/run.jsonl [more evaluation.dsr_eval flags]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash evaluation/eval.sh ...same flags...   # NODE_RANK=1 on node 1
#
# Flags are `python -m evaluation.dsr_eval`'s (`--help` there lists them), passed on as given.
# Rerunning with the same --output_file resumes; on several nodes it must lie on a folder that all
# nodes share. Environment: NUM_GPUS (processes per node; default: every visible GPU, else 1), NNODES
# NODE_RANK MASTER_ADDR MASTER_PORT (scripts/launch_common.sh), PY; DRY_RUN=1 prints the command and
# runs nothing. One process on one node runs plain python, anything more torchrun.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAUNCH_NAME="evaluation/eval.sh"
source "$ROOT/scripts/launch_common.sh"
launch_python
launch_layout
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

if [ -z "${NUM_GPUS:-}" ]; then
    NUM_GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
    ((NUM_GPUS > 0)) || NUM_GPUS=1  # no GPU: one CPU process per node
fi
[[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]] || launch_usage_error "NUM_GPUS must be a positive integer, got '$NUM_GPUS'"

if ((NNODES == 1 && NUM_GPUS == 1)); then
    CMD=("$PY" -m evaluation.dsr_eval "$@")
else
    launch_torchrun "$NUM_GPUS"
    CMD=("${TORCHRUN[@]}" -m evaluation.dsr_eval "$@")
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
    print_command "${CMD[@]}"
    exit 0
fi
echo "[evaluation/eval.sh] $(launch_describe "$NUM_GPUS" evaluation)"
"${CMD[@]}"
