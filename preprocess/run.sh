#!/usr/bin/env bash
# Run every step of the data engine in order; rerunning resumes (finished clips are skipped).
#
#   preprocess/run.sh INPUT_ROOT OUTPUT_ROOT SAM3_MODEL [extra flags for the per-clip steps]
#
# INPUT_ROOT: SpatialVID (videos/, annotations/). OUTPUT_ROOT: the engine's folder (layout in
# preprocess/__init__.py). SAM3_MODEL: a SAM3 checkpoint folder (facebook/sam3, or
# scripts/build_tiny_sam3.py's). The LLM comes from OPENAI_BASE_URL / OPENAI_API_KEY (and
# LLM_MODEL, default gpt-4.1). Environment knobs: PY (python), WORKERS (default 4), SEED (0),
# TRACKING=1 (SAM3 video tracking instead of per-frame prompts), DEVICE (auto),
# SCORE_THRESHOLD (SAM3 instance score, default 0.5; the tiny random demo model needs 0).
# Extra flags go to every per-clip step, so only their shared flags fit: --retry_failed, --clips, --log_level.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
IN="$1"; OUT="$2"; SAM3="$3"; shift 3
PY="${PY:-python}"
WORKERS="${WORKERS:-4}"
SEED="${SEED:-0}"
TRACK=()
[ "${TRACKING:-0}" = "1" ] && TRACK=(--tracking)

step() { echo "[preprocess] $1" >&2; "$PY" -m preprocess "$@"; }
step frames --input "$IN" --out "$OUT" --workers "$WORKERS" "$@"
step objects --out "$OUT" --workers "$WORKERS" "$@"
step masks --out "$OUT" --model "$SAM3" --device "${DEVICE:-auto}" --score_threshold "${SCORE_THRESHOLD:-0.5}" "${TRACK[@]}" "$@"
step camera_qa --out "$OUT" --workers "$WORKERS" --seed "$SEED" "$@"
step object_qa --out "$OUT" --workers "$WORKERS" --seed "$SEED" "$@"
step merge --out "$OUT"
step convert --out "$OUT"
step check --out "$OUT"
echo "[preprocess] done: $OUT/dift_data.jsonl, $OUT/rl_data.jsonl" >&2
