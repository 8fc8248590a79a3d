#!/usr/bin/env bash
# Demo stage: single-video inference with latent-aware generation, on a synthetic clip (as a video
# file, then as a folder of frames). The batched-generation benchmark is scripts/bench_generate.py.
# Env from demo.sh: PY, WORK; CHECKPOINT (demo.sh: the 4DRL checkpoint) or else DIFT_MODEL = the
# checkpoint to ask (default: a tiny latent checkpoint built into $WORK/tiny-latent);
# EVAL_MAX_NEW_TOKENS = the generation budget (default 160).
# Output: each answer as printed (the model's text, then "Answer: X") in $WORK/inference/answer_*.txt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODEL="$(asked_model)"
INF="$WORK/inference"
TOKENS="${EVAL_MAX_NEW_TOKENS:-160}"
mkdir -p "$INF"
rm -f "$INF"/answer_*.txt
"$PY" - "$INF" <<'PYEOF'
import sys
from pathlib import Path

from scripts.synthetic_media import moving_square_frames, write_mp4

out = Path(sys.argv[1])
frames = moving_square_frames(8, width=112, height=112, direction="right")
write_mp4(out / "square_right.mp4", frames, fps=2)  # 4 s: 4 frames at 1 fps
(out / "frames").mkdir(exist_ok=True)
for i, frame in enumerate(frames[::2]):
    frame.save(out / "frames" / f"frame_{i:04d}.jpg")
PYEOF
QUESTION=$'In which direction does the red square move?\n\nA. Left\nB. Right\nC. Up\nD. Down'
# --generation_config flags: sample (temperature 0.7, top-p 0.9) instead of the checkpoint's top_k 1.
echo "--- sampled, from the video file"
"$PY" -m dift.inference --model_path "$MODEL" --video "$INF/square_right.mp4" --question "$QUESTION" \
  --cache_dir "$WORK/cache" --max_new_tokens "$TOKENS" --generation_config flags --seed 42 | tee "$INF/answer_sampled.txt"
echo "--- greedy, from a frame folder"
"$PY" -m dift.inference --model_path "$MODEL" --image_dir "$INF/frames" --question "$QUESTION" \
  --max_new_tokens "$TOKENS" --greedy | tee "$INF/answer_greedy.txt"
