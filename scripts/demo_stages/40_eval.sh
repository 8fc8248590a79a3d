#!/usr/bin/env bash
# Demo stage: DSR evaluation on the synthetic benchmark (13 sub-task types, one corrupt and one
# missing video, which are skipped and counted), then rescoring of the results file.
# Env from demo.sh: PY, WORK; CHECKPOINT (demo.sh: the 4DRL checkpoint) or else DIFT_MODEL = the
# checkpoint to evaluate (default: a tiny latent checkpoint built into $WORK/tiny-latent);
# EVAL_PER_TYPE = questions per sub-task (default 2); EVAL_MAX_NEW_TOKENS = generation budget (160).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL="$(asked_model)"
EVAL="$WORK/eval"
"$PY" scripts/make_demo_benchmark.py --out "$EVAL/bench" --per_type "${EVAL_PER_TYPE:-2}" --seed 0 --missing 1 --corrupt 1
# A fresh results file each demo run (rerunning with the same --output_file resumes instead).
rm -f "$EVAL"/results/dsr_eval_demo*
"$PY" -m evaluation.dsr_eval --model_path "$MODEL" --benchmark_path "$EVAL/bench/benchmark.parquet" \
  --video_root "$EVAL/bench/videos" --output_file "$EVAL/results/dsr_eval_demo.jsonl" \
  --max_new_tokens "${EVAL_MAX_NEW_TOKENS:-160}" --batch_size 8 --num_workers 2
"$PY" -m evaluation.rescore "$EVAL/results/dsr_eval_demo.jsonl"
echo "evaluation results: $EVAL/results/dsr_eval_demo.jsonl (+ _summary.json, _rescored_summary.json)"
