#!/usr/bin/env bash
# The GPU check, in one call (under 8 minutes on one H100): what a GPU machine tells us that this
# project's CPU tests cannot.
#   1. builds the random `3b` preset (Qwen2.5-VL-3B shapes, bf16) twice: base (DIFT step) and DIFT-ready
#      (latent tokens: generation, 4DRL);
#   2. runs the GPU tests (tests/test_gpu.py: bf16 DIFT step, generation + replay, the compiled engine
#      with CUDA graphs == eager == the reference loop, no recompilation);
#   3. latent decode tokens/s at batch 1 and 32: the engine compiled (CUDA graphs) vs eager vs upstream
#      generate(), the fraction of the memory-bandwidth roofline at batch 1, peak memory
#      (scripts/bench_decode.py);
#   4. one DIFT step (scripts/dift_step.py, bf16);
#   5. one GRPO step (LoRA, 2 prompts x G 4, rollouts on the engine) and its split: rollout, log-prob
#      forwards, update (the trainer's time/* metrics).
#
#   bash scripts/gpu_check.sh          # on the GPU machine
#   bash scripts/gpu_check.sh --dry    # on CPU with the tiny preset, small sizes: checks the script itself
#
# PY: the Python to use (default: .venv/bin/python if present, else python). Everything it writes goes to a
# temporary folder, removed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
PY="${PY:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python)}"
DRY=0
case "${1:-}" in
    --dry) DRY=1 ;;
    "") ;;
    *) echo "usage: bash scripts/gpu_check.sh [--dry]" >&2; exit 2 ;;
esac
if [ "$DRY" = 1 ]; then
    PRESET=tiny DEVICE=cpu BATCHES=1,4 NEW_TOKENS=24 COMPLETION=16 BF16=() DEVICE_FLAGS=(--use_cpu)
    export CUDA_VISIBLE_DEVICES=""
else
    PRESET=3b DEVICE=cuda BATCHES=1,32 NEW_TOKENS=256 COMPLETION=128 BF16=(--bf16) DEVICE_FLAGS=()
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
section() { echo; echo "== $1 ($((SECONDS - START)) s)"; }

section "build the $PRESET preset"
"$PY" scripts/build_tiny_model.py --out "$WORK/base" --preset "$PRESET" --device "$DEVICE"
"$PY" scripts/build_tiny_model.py --out "$WORK/latent" --preset "$PRESET" --latent --device "$DEVICE"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

section "GPU tests"
if [ "$DRY" = 1 ]; then
    "$PY" -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -1  # all skipped without CUDA
else
    "$PY" -m pytest tests/test_gpu.py -q -p no:cacheprovider
fi

section "latent decode: engine compiled vs eager vs upstream generate()"
"$PY" scripts/bench_decode.py --model "$WORK/latent" --batch_sizes "$BATCHES" --max_new_tokens "$NEW_TOKENS" \
    --device "$DEVICE"

section "one DIFT step"
"$PY" scripts/dift_step.py --model "$WORK/base" --repeats 2 "${BF16[@]}"

section "one GRPO step (LoRA, 2 prompts x 4 completions, rollouts on the engine)"
"$PY" scripts/make_demo_rl_data.py --out "$WORK/rl" --num_samples 4 >/dev/null
"$PY" -m fourdrl.train --model_name_or_path "$WORK/latent" --data_path "$WORK/rl/rl_data.jsonl" \
    --output_dir "$WORK/4drl" --exp_name check --reward_funcs accuracy format --num_generations 4 \
    --per_device_train_batch_size 8 --gradient_accumulation_steps 1 --max_completion_length "$COMPLETION" \
    --max_steps 1 --save_strategy no --report_to none --use_peft --rollout_engine "${DEVICE_FLAGS[@]}" \
    >"$WORK/grpo.out" 2>&1 || { tail -20 "$WORK/grpo.out"; exit 1; }
"$PY" - "$WORK/4drl/check/logs" <<'EOF'
import pathlib, re, sys
text = "\n".join(f.read_text() for f in sorted(pathlib.Path(sys.argv[1]).glob("*.log")))
split = {name: float(value) for name, value in re.findall(r"time/(\w+)=([-+.\de]+)", text)}
total = sum(split.values())
print("GRPO step: " + ", ".join(f"{name} {value:.2f} s ({value / total:.0%})" for name, value in split.items()))
EOF
section "done"
