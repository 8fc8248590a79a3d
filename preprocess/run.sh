#!/usr/bin/env bash
# Run every step of the data engine in order; rerunning resumes (finished clips are skipped, LLM
# replies already received are reused).
#
#   preprocess/run.sh INPUT_ROOT OUTPUT_ROOT SAM3_MODEL [flags for the per-clip steps]
#
# INPUT_ROOT: SpatialVID (videos/, annotations/). OUTPUT_ROOT: the engine's folder (layout:
# python -m preprocess --help). SAM3_MODEL: a SAM3 checkpoint folder or Hub id (facebook/sam3, or
# scripts/build_tiny_sam3.py's). The LLM comes from OPENAI_BASE_URL / OPENAI_API_KEY (and LLM_MODEL,
# default gpt-4.1). Environment: PY (python), WORKERS (default 4), SEED (0), TRACKING=1 (SAM3 video
# tracking instead of per-frame prompts), DEVICE (auto), SCORE_THRESHOLD (SAM3 instance score,
# default 0.5; the tiny random demo model needs 0).
# The flags go to every per-clip step (frames, objects, masks, camera_qa, object_qa) under the names
# those steps take: --retry_failed, --clips, --max_skip_fraction, --log_level, --workers.
# Exit code: the first failing step's (1 failed, 2 bad flag, 130 interrupted); its last line says why.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: preprocess/run.sh INPUT_ROOT OUTPUT_ROOT SAM3_MODEL [flags for the per-clip steps]" >&2
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
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
