#!/usr/bin/env bash
# Evaluate several checkpoints on the DSR benchmark at once, one per GPU, wait for all of them and
# report which failed (exit status 1 if any did).
#
#   bash evaluation/batch_dsr_eval.sh                                   # the default entries below
#   bash evaluation/batch_dsr_eval.sh "0 4dthinker_dift" "1 4dthinker_4drl:100" -- --batch_size 8
#
# An entry is "GPU_ID exp_name" (model $MODEL_ROOT/<exp>/checkpoints) or "GPU_ID exp_name:step"
# (model $MODEL_ROOT/<exp>/checkpoints/checkpoint-<step>); empty entries and entries containing
# PLACEHOLDER_ are skipped. The latent size comes from "latent<N>" in the experiment name, else 4.
# Flags after "--" go to every `python -m evaluation.dsr_eval` run (same names; they win over the
# settings below; --output_file is this script's to choose).
# Each run writes $RESULTS_ROOT/<exp>[-<step>]/dsr_eval[_$RUN_TAG].jsonl, its _summary.json and _run.json,
# and appends its stdout and stderr to the .log beside them. The names hold no timestamp: rerunning
# the same command resumes each run where it stopped (a run already finished only re-prints its
# table); RUN_TAG (e.g. greedy) gives runs with other settings their own files.
# Environment: MODEL_ROOT (<repository>/model), RESULTS_ROOT (./results, from the working folder),
# BENCHMARK_PATH (<repository>/raw_data/DSR_Suite-Data/benchmark.parquet), VIDEO_ROOT
# (<repository>/raw_data/DSR-data/bmk_video), MAX_NEW_TOKENS (8192), SEED (42), TEMPERATURE (0.7),
# TOP_P (0.9), RUN_TAG, PY (the project's .venv python); DRY_RUN=1 prints each run's command and
# writes nothing. For one checkpoint on many GPUs or several nodes, use evaluation/eval.sh.
#
# Unlike the original, this script finds its inputs from the repository root (the original changed
# into the folder two levels above evaluation/), waits for its runs, and fails if one fails.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

DEFAULT_ENTRIES=(
  "0 4dthinker_dift"
  "1 4dthinker_4drl:100"
)
PY="${PY:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python
MODEL_ROOT="${MODEL_ROOT:-$ROOT/model}"
RESULTS_ROOT="${RESULTS_ROOT:-./results}"
BENCHMARK_PATH="${BENCHMARK_PATH:-$ROOT/raw_data/DSR_Suite-Data/benchmark.parquet}"
VIDEO_ROOT="${VIDEO_ROOT:-$ROOT/raw_data/DSR-data/bmk_video}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-8192}"
SEED="${SEED:-42}"
TEMPERATURE="${TEMPERATURE:-0.7}"
TOP_P="${TOP_P:-0.9}"

entries=()
extra=()
while (($#)); do
  if [[ "$1" == "--" ]]; then
    shift
    extra=("$@")
    break
  fi
  entries+=("$1")
  shift
done
((${#entries[@]})) || entries=("${DEFAULT_ENTRIES[@]}")
for arg in ${extra[@]+"${extra[@]}"}; do
  if [[ "$arg" == --output_file || "$arg" == --output_file=* ]]; then
    echo "batch_dsr_eval.sh: --output_file is chosen per run (\$RESULTS_ROOT/<run>/dsr_eval[_\$RUN_TAG].jsonl); set RESULTS_ROOT or RUN_TAG instead" >&2
    exit 2
  fi
done

pids=()
names=()
logs=()
failed=0
trap 'echo "interrupted: stopped ${pids[*]:-nothing}; finished answers are kept under $RESULTS_ROOT, rerun the same command to resume" >&2; for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; exit 130' INT TERM

for entry in "${entries[@]}"; do
  read -r gpu exp_spec rest <<<"$entry"
  if [[ -z "${gpu:-}" || "$entry" == *PLACEHOLDER_* ]]; then
    continue
  fi
  if [[ -z "${exp_spec:-}" || -n "${rest:-}" || ! "$gpu" =~ ^[0-9]+$ ]]; then
    echo "FAILED: bad entry '$entry' (expected \"GPU_ID exp_name\" or \"GPU_ID exp_name:step\")" >&2
    failed=1
    continue
  fi
  exp="${exp_spec%%:*}"
  step=""
  [[ "$exp_spec" == *:* ]] && step="${exp_spec#*:}"
  model="$MODEL_ROOT/$exp/checkpoints"
  [[ -n "$step" ]] && model="$model/checkpoint-$step"
  run_name="$exp${step:+-$step}"
  latent_size=4
  [[ "$exp" =~ latent([0-9]+) ]] && latent_size="${BASH_REMATCH[1]}"
  out_dir="$RESULTS_ROOT/$run_name"
  output="$out_dir/dsr_eval${RUN_TAG:+_$RUN_TAG}.jsonl"
  log="${output%.jsonl}.log"
  cmd=(env CUDA_VISIBLE_DEVICES="$gpu" "$PY" -m evaluation.dsr_eval
    --model_path "$model" --benchmark_path "$BENCHMARK_PATH" --video_root "$VIDEO_ROOT"
    --latent_size "$latent_size" --max_new_tokens "$MAX_NEW_TOKENS" --seed "$SEED"
    --temperature "$TEMPERATURE" --top_p "$TOP_P" --output_file "$output"
    ${extra[@]+"${extra[@]}"})
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf -v line '%q ' "${cmd[@]}"
    echo "${line% } >>$(printf '%q' "$log") 2>&1"
    continue
  fi
  mkdir -p "$out_dir"
  printf '===== %s: %s\n' "$(date '+%F %T')" "${cmd[*]}" >>"$log"
  "${cmd[@]}" >>"$log" 2>&1 &
  pids+=("$!")
  names+=("$run_name")
  logs+=("$log")
  echo "started $run_name on GPU $gpu (pid $!, latent_size $latent_size): $log"
done
[[ "${DRY_RUN:-0}" == 1 ]] && exit "$failed"

for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "ok      ${names[$i]}: ${logs[$i]%.log}.jsonl"
  else
    status=$?
    echo "FAILED  ${names[$i]} (exit $status): ${logs[$i]}: $(tail -n 1 "${logs[$i]}")" >&2
    failed=1
  fi
done
if ((failed)); then
  echo "some evaluations failed" >&2
  exit 1
fi
echo "all ${#pids[@]} evaluations finished"
