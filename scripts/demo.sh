#!/usr/bin/env bash
# Set up (idempotent) and run every stage end to end on the embedded tiny default.
# Outputs go to $DEMO_DIR (default .cache/demo).
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

stage() { printf '\n=== %s ===\n' "$*"; }

stage "1. embedded default checkpoint (random-weight Qwen2.5-VL, real tokenizer and processor)"
export BASE_MODEL="$WORK/tiny-qwen2.5-vl"
"$PY" scripts/build_tiny_model.py --out "$BASE_MODEL" --preset tiny --seed 0

stage "2. DIFT: one forward + backward on a synthetic sample"
"$PY" scripts/dift_step.py --model "$BASE_MODEL"

printf '\nDemo finished. Outputs in %s\n' "$WORK"
