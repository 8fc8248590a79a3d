#!/usr/bin/env bash
# Set up (idempotent) and run every stage end to end on the embedded tiny default:
#   1. build the tiny random-weight Qwen2.5-VL checkpoint (real tokenizer, chat template, processor)
#   2. data engine: synthetic SpatialVID clips -> frames, objects (loopback LLM), masks (tiny SAM3),
#      camera/object-motion QA with CoT -> DIFT and RL training JSONL
#   3. DIFT: train a few steps on the engine's output
#   4. inference: ask the DIFT checkpoint about one video
#   5. evaluation: DSR-format synthetic benchmark (13 sub-tasks), batched eval + rescore
# Outputs go to $DEMO_DIR (default .cache/demo). DIFT_DEMO_DISTRIBUTED=1 trains stage 3 with
# 2 processes (torchrun + DeepSpeed ZeRO-2 on gloo) instead of one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PY="$ROOT/.venv/bin/python"
export WORK="${DEMO_DIR:-$ROOT/.cache/demo}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export FOURDTHINKER_FRAME_CACHE="$WORK/frame_cache"
export TOKENIZERS_PARALLELISM=false
mkdir -p "$WORK"
start=$SECONDS

stage() { printf '\n=== %s (%ss) ===\n' "$*" "$((SECONDS - start))"; }

stage "1. embedded default checkpoint"
export BASE_MODEL="$WORK/tiny-qwen2.5-vl"
"$PY" scripts/build_tiny_model.py --out "$BASE_MODEL" --preset tiny --seed 0

stage "2. data engine: SpatialVID clips -> DIFT / RL training data"
bash scripts/demo_stages/10_preprocess.sh

stage "3. DIFT training on the engine's output"
export DIFT_DATA="$WORK/engine/dift_data.jsonl"
bash scripts/demo_stages/20_dift_train.sh
export DIFT_MODEL="$WORK/dift_out/dift_demo/checkpoints"

stage "4. inference: one question about one video"
bash scripts/demo_stages/30_inference.sh

stage "5. DSR evaluation and rescoring"
bash scripts/demo_stages/40_eval.sh

printf '\nDemo finished in %ss. Outputs in %s\n' "$((SECONDS - start))" "$WORK"
