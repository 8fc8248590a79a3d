#!/usr/bin/env bash
# Demo stage: the data engine end to end on synthetic SpatialVID clips, with a tiny random SAM3 and
# the loopback OpenAI-compatible LLM server. Leaves the DIFT training data at
# $WORK/engine/dift_data.jsonl (read by the DIFT stage) and the RL data at $WORK/engine/rl_data.jsonl.
# Env from demo.sh: PY, WORK; DEMO_CLIPS = synthetic clips (default 4).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ENGINE="$WORK/engine"
SRC="$WORK/spatialvid"
SAM3="$WORK/tiny-sam3"

"$PY" scripts/make_demo_spatialvid.py --out "$SRC" --num_clips "${DEMO_CLIPS:-4}" --seed 0
[[ -f "$SAM3/config.json" ]] || "$PY" scripts/build_tiny_sam3.py --out "$SAM3"

# A fresh engine folder each demo run (rerunning run.sh on the same folder resumes instead).
rm -rf "$ENGINE"
PORT_FILE="$(mktemp -u "$WORK/llm_port.XXXXXX")"
"$PY" scripts/llm_server.py --truth "$SRC/truth.json" --port 0 --port_file "$PORT_FILE" \
  --api_key demo-key 2> "$WORK/llm_server.log" &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; rm -f "$PORT_FILE"' EXIT
for _ in $(seq 100); do [[ -s "$PORT_FILE" ]] && break; sleep 0.1; done
[[ -s "$PORT_FILE" ]] || { echo "the loopback LLM server did not start (see $WORK/llm_server.log)" >&2; exit 1; }

export OPENAI_BASE_URL="http://127.0.0.1:$(cat "$PORT_FILE")/v1" OPENAI_API_KEY=demo-key
# score threshold 0: the random SAM3 scores every instance near 0.25
PY="$PY" WORKERS=4 SEED=0 SCORE_THRESHOLD=0 bash preprocess/run.sh "$SRC" "$ENGINE" "$SAM3"

n=$(wc -l < "$ENGINE/dift_data.jsonl")
echo "data engine: $n DIFT records in $ENGINE/dift_data.jsonl, $(wc -l < "$ENGINE/rl_data.jsonl") RL records in $ENGINE/rl_data.jsonl"
[[ "$n" -ge 1 ]] || { echo "the data engine wrote no DIFT record" >&2; exit 1; }
