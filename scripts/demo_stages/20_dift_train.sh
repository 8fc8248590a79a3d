#!/usr/bin/env bash
# Demo stage: DIFT training on the tiny base checkpoint, DIFT_STEPS (default 6) optimizer steps on CPU,
# single process (dift/train_single_gpu.sh). DIFT_DEMO_DISTRIBUTED=1 runs the
# 2-process torchrun + DeepSpeed ZeRO-2 recipe (dift/train_cpu.sh) instead; its first run JIT-builds
# DeepSpeed's CPU comm op (once; kept in $TORCH_EXTENSIONS_DIR).
# Env from demo.sh: PY, WORK, BASE_MODEL; DIFT_DATA = a dift_data.jsonl to train on (default: the
# synthetic demo data, built into $WORK/dift_data).
# Output: $WORK/dift_out/dift_demo/checkpoints (the final checkpoint; later stages' DIFT_MODEL).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BASE_MODEL="${BASE_MODEL:-$WORK/tiny-qwen2.5-vl}"
[[ -f "$BASE_MODEL/config.json" ]] || "$PY" scripts/build_tiny_model.py --out "$BASE_MODEL"
DATA="${DIFT_DATA:-}"
if [[ -z "$DATA" ]]; then
  DATA="$WORK/dift_data/dift_data.jsonl"
  "$PY" scripts/make_demo_dift_data.py --out "$WORK/dift_data" --num_samples 8 --seed 0
fi
OUT="$WORK/dift_out"
EXP=dift_demo
rm -rf "$OUT/$EXP"  # a fresh run each demo (pass --resume_from_checkpoint true to continue one instead)

# A large learning rate (the real recipe uses 1e-5) so that a few steps move the loss: measured on the
# default demo data, CE 11.95 -> 11.67 over 6 steps, -> 9.15 over 24. Over hundreds of steps it falls
# about 100x as the tiny model memorises the CoT template, while held-out accuracy stays at chance: it
# learns the template, not the task (issue 12). The demo's answers and accuracies are noise.
export PY MODEL="$BASE_MODEL" DATA OUTPUT_DIR="$OUT" EXP_NAME="$EXP" LR=3e-3 WARMUP_STEPS=1 \
  GRAD_ACCUM=1 LOGGING_STEPS=2 SAVE_STEPS=4
if [[ "${DIFT_DEMO_DISTRIBUTED:-0}" = 1 ]]; then
  bash dift/train_cpu.sh --max_steps "${DIFT_STEPS:-6}" --max_frames 8
else
  bash dift/train_single_gpu.sh --max_steps "${DIFT_STEPS:-6}" --max_frames 8
fi
FINAL="$OUT/$EXP/checkpoints"
"$PY" - "$FINAL" <<'PYEOF'
import json
import sys
from pathlib import Path

state = json.loads((Path(sys.argv[1]) / "trainer_state.json").read_text())
losses = [(e["step"], round(e["total_loss"], 4)) for e in state["log_history"] if "total_loss" in e]
print("DIFT total loss by step:", ", ".join(f"{s}: {v}" for s, v in losses))
PYEOF
echo "DIFT final checkpoint: $FINAL"
