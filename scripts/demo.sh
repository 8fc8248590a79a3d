#!/usr/bin/env bash
# Set up (idempotent) and run every stage end to end on the embedded tiny default, then print a
# table of what each stage did (scripts/demo_report.py: stage, seconds, key figure, output path):
#   1. tiny checkpoint: a random-weight Qwen2.5-VL (real tokenizer, chat template, processor)
#   2. data engine: synthetic SpatialVID clips -> frames, objects (loopback LLM), masks (tiny SAM3),
#      camera/object-motion QA with CoT -> DIFT and RL training JSONL
#   3. DIFT on the engine's DIFT records (a few steps: the table shows how far the losses moved)
#   4. 4DRL (GRPO with latent imagery) from the DIFT checkpoint on the engine's RL records
#   5. inference: one question about one video, asked to the 4DRL checkpoint
#   6. evaluation: DSR-format synthetic benchmark (13 sub-tasks), batched eval + rescore of the
#      4DRL checkpoint, accuracy beside the chance and most-common-letter baselines
# The tiny model has random weights: its answers and accuracies are noise. What the demo shows is
# that every stage runs on the real code, end to end, on a CPU.
#
# Environment (defaults keep the demo short on 2 CPU cores):
#   DEMO_DIR             outputs (default .cache/demo); the stage log is $DEMO_DIR/demo_stages.jsonl
#   DEMO_SETUP=0         skip scripts/setup.sh (an existing .venv is used as it is)
#   DEMO_CLIPS           synthetic SpatialVID clips for the data engine (default 4)
#   DIFT_STEPS           DIFT optimizer steps (default 6)
#   RL_STEPS             4DRL optimizer steps (default 2)
#   EVAL_PER_TYPE        benchmark questions per sub-task, 13 sub-tasks (default 2)
#   EVAL_MAX_NEW_TOKENS  generation budget of inference and evaluation (default 160: the engine's
#                        CoT answers take 83-138 tokens, latent blocks included, to <|im_end|>)
#   DIFT_DEMO_DISTRIBUTED=1 / RL_DEMO_DISTRIBUTED=1   train with 2 processes (torchrun + DeepSpeed
#                        ZeRO-2 on gloo) instead of one
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ "${DEMO_SETUP:-1}" = 0 ]] || bash scripts/setup.sh
export PY="$ROOT/.venv/bin/python"
export WORK="${DEMO_DIR:-$ROOT/.cache/demo}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
export FOURDTHINKER_FRAME_CACHE="$WORK/frame_cache"
export TOKENIZERS_PARALLELISM=false
export DEMO_CLIPS="${DEMO_CLIPS:-4}" DIFT_STEPS="${DIFT_STEPS:-6}" RL_STEPS="${RL_STEPS:-2}"
export EVAL_PER_TYPE="${EVAL_PER_TYPE:-2}" EVAL_MAX_NEW_TOKENS="${EVAL_MAX_NEW_TOKENS:-160}"
for var in DEMO_CLIPS DIFT_STEPS RL_STEPS EVAL_PER_TYPE EVAL_MAX_NEW_TOKENS; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "demo.sh: $var must be a positive integer, got '${!var}'" >&2; exit 2; }
done
mkdir -p "$WORK"
LOG="$WORK/demo_stages.jsonl"
rm -f "$LOG"
REPORT=("$PY" scripts/demo_report.py)

cat <<'EOF'
================================================================================================
 4DThinker demo on the embedded tiny default.
 The tiny model has RANDOM WEIGHTS: its answers and accuracies are noise, not results.
 The point is that every stage (data engine, DIFT, 4DRL, inference, evaluation) runs on the real
 code, end to end; the table at the end says what each stage did and where its outputs are.
================================================================================================
EOF
printf 'scale: %s clips, %s DIFT steps, %s 4DRL steps, %s questions per sub-task, %s new tokens\n' \
  "$DEMO_CLIPS" "$DIFT_STEPS" "$RL_STEPS" "$EVAL_PER_TYPE" "$EVAL_MAX_NEW_TOKENS"

now() { echo "${EPOCHREALTIME:-$SECONDS}"; }
CURRENT=""
# A failed stage is recorded as such and the table printed before the demo exits with its status.
on_exit() {
  local status=$?
  if [[ $status -ne 0 && -n "$CURRENT" ]]; then
    "${REPORT[@]}" record --log "$LOG" --kind "$CURRENT" --start "$STAGE_START" --end "$(now)" \
      --output "$STAGE_OUT" --status "failed (exit $status)" || true
    "${REPORT[@]}" table --log "$LOG" || true
  fi
}
trap on_exit EXIT

# run_stage KIND TITLE OUTPUT COMMAND...: run one stage and append its record to $LOG.
run_stage() {
  CURRENT="$1" STAGE_OUT="$3"
  printf '\n=== %s ===\n' "$2"
  STAGE_START="$(now)"
  "${@:4}"
  "${REPORT[@]}" record --log "$LOG" --kind "$CURRENT" --start "$STAGE_START" --end "$(now)" --output "$STAGE_OUT"
  CURRENT=""
}

export BASE_MODEL="$WORK/tiny-qwen2.5-vl"
run_stage checkpoint "1. tiny random-weight checkpoint" "$BASE_MODEL" \
  "$PY" scripts/build_tiny_model.py --out "$BASE_MODEL" --preset tiny --seed 0

run_stage data_engine "2. data engine: SpatialVID clips -> DIFT / RL training data" "$WORK/engine" \
  bash scripts/demo_stages/10_preprocess.sh

export DIFT_DATA="$WORK/engine/dift_data.jsonl"
export DIFT_MODEL="$WORK/dift_out/dift_demo/checkpoints"
run_stage dift "3. DIFT training on the engine's DIFT records" "$DIFT_MODEL" \
  bash scripts/demo_stages/20_dift_train.sh

export RL_DATA="$WORK/engine/rl_data.jsonl"
export CHECKPOINT="$WORK/rl_out/rl_demo/checkpoints"
run_stage fourdrl "4. 4DRL from the DIFT checkpoint on the engine's RL records" "$CHECKPOINT" \
  bash scripts/demo_stages/25_fourdrl.sh

run_stage inference "5. inference: one question about one video (4DRL checkpoint)" "$WORK/inference" \
  bash scripts/demo_stages/30_inference.sh

run_stage evaluation "6. DSR evaluation and rescoring (4DRL checkpoint)" "$WORK/eval/results/dsr_eval_demo.jsonl" \
  bash scripts/demo_stages/40_eval.sh

printf '\n'
"${REPORT[@]}" table --log "$LOG"
