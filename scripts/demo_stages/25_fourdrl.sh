#!/usr/bin/env bash
# Demo stage: 4DRL (GRPO with latent imagery) from the demo's DIFT checkpoint on the data engine's RL
# records, RL_STEPS (default 2) optimizer steps on CPU, single process (python -m fourdrl.train).
# RL_DEMO_DISTRIBUTED=1 runs the 2-process torchrun + DeepSpeed ZeRO-2 recipe (fourdrl/train_cpu.sh) instead.
# Env from demo.sh: PY, WORK; DIFT_MODEL = the checkpoint to start from (default: a tiny latent
# checkpoint built into $WORK/tiny-latent); RL_DATA = an rl_data.jsonl (default: the engine's, or a
# synthetic one built into $WORK/rl_data).
# Output: $WORK/rl_out/rl_demo/checkpoints (the final checkpoint; demo.sh's later stages ask it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL="$(dift_model)"
DATA="${RL_DATA:-$WORK/engine/rl_data.jsonl}"
if [[ ! -f "$DATA" ]]; then
  DATA="$WORK/rl_data/rl_data.jsonl"
  "$PY" scripts/make_demo_rl_data.py --out "$WORK/rl_data" --num_samples 8 --seed 0
fi
OUT="$WORK/rl_out"
EXP=rl_demo
rm -rf "$OUT/${EXP:?}"  # a fresh run each demo (a rerun on the same folder would resume instead)

# Demo scale: 2 prompts x G 4 completions per step, 4 frames, a checkpoint every 2 steps. Completions are cut at
# 24 tokens, before any </answer> (the engine's CoT answers take 83-138 tokens; the table's "clipped" is the
# fraction cut): the format reward is then 0 and the accuracy reward scores the first capital letter in
# the text. A random-weight model's rewards are noise, not results. The real recipe is fourdrl/train.sh.
FLAGS=(--max_steps "${RL_STEPS:-2}" --save_steps 2 --max_frames 4 --max_completion_length 24 --learning_rate 1e-4)
if [[ "${RL_DEMO_DISTRIBUTED:-0}" = 1 ]]; then
  MODEL="$MODEL" DATA="$DATA" OUTPUT_DIR="$OUT" EXP_NAME="$EXP" PROMPTS_PER_DEVICE=1 NUM_GENERATIONS=4 \
    bash fourdrl/train_cpu.sh "${FLAGS[@]}"
else
  "$PY" -m fourdrl.train --model_name_or_path "$MODEL" --data_path "$DATA" --output_dir "$OUT" --exp_name "$EXP" \
    --num_generations 4 --per_device_train_batch_size 8 --gradient_accumulation_steps 1 "${FLAGS[@]}"
fi
FINAL="$OUT/$EXP/checkpoints"
"$PY" - "$FINAL" <<'PYEOF'
import json
import sys
from pathlib import Path

state = json.loads((Path(sys.argv[1]) / "trainer_state.json").read_text())
columns = {"reward": "reward", "accuracy": "rewards/accuracy_reward/mean", "format": "rewards/format_reward/mean",
           "kl": "kl", "replay_max_diff": "replay/max_abs_logprob_diff", "latent_blocks": "completions/latent_blocks_mean",
           "text_tokens": "completions/mean_length", "rollout_s": "time/rollout", "logprobs_s": "time/logprobs",
           "update_s": "time/update"}
print("4DRL metrics by step (tiny random model: noise, not results):")
print("step " + " ".join(f"{name:>15}" for name in columns))
for entry in state["log_history"]:
    if "reward" in entry:
        print(f"{entry['step']:>4} " + " ".join(f"{entry.get(key, float('nan')):>15.4g}" for key in columns.values()))
PYEOF
echo "4DRL final checkpoint: $FINAL"
