"""Benchmark: the vectorised M-RoPE position function (dift.core.positions, the original's rule) against
upstream transformers' per-row `get_rope_index`, on a batch of long-video prompts, measured in the same run.

    python scripts/bench_positions.py [--batch 8] [--repeats 20] [--threads 2]

Each prompt is what the processor makes of a 50-frame 336x560 clip at 1 fps (video grid 25 x 24 x 40,
6,000 video tokens) with text before and after, left-padded to the longest row (rows differ in their
text lengths). First prints, for one such prompt, the position of the first text token after the video
under both rules (the upstream rule places it inside the video's time range). Then the median time per
batch of each function, and `positions_speedup=<x>` (upstream time / ours).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2_5_VLModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.core.checkpoint import load_latent_model  # noqa: E402
from dift.core.positions import model_position_ids  # noqa: E402
from scripts.build_tiny_model import write_checkpoint  # noqa: E402

GRID = (25, 24, 40)  # 50 frames of 336 x 560 at 1 fps


def long_video_batch(config, batch: int) -> dict:
    """Left-padded ids of `batch` prompts: 14 + i text tokens, the video block, 40 + 3 i text tokens."""
    t, h, w = GRID
    n_video = t * (h // 2) * (w // 2)
    rows = [[100] * (14 + i) + [config.vision_start_token_id] + [config.video_token_id] * n_video
            + [config.vision_end_token_id] + [101] * (40 + 3 * i) for i in range(batch)]
    length = max(len(r) for r in rows)
    ids = torch.full((batch, length), 151643)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row):] = torch.tensor(row)
        mask[b, length - len(row):] = 1
    return dict(input_ids=ids, mm_token_type_ids=(ids == config.video_token_id).int() * 2, attention_mask=mask,
                image_grid_thw=None, video_grid_thw=torch.tensor([GRID] * batch),
                second_per_grid_ts=torch.full((batch,), 2.0))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_latent_model(write_checkpoint(Path(tmp) / "tiny", latent=True), dtype=torch.float32).model
    inner, config = model.model, model.config

    one = long_video_batch(config, 1)
    video_end = int((one["input_ids"][0] == config.vision_end_token_id).nonzero()[0, 0])
    ours = model_position_ids(config, **one)[0]
    upstream = Qwen2_5_VLModel.get_rope_index(inner, **one)[0]
    print(f"50-frame prompt (grid {GRID}, 2.0 s per grid): <|vision_end|> at {int(ours[0, 0, video_end])} "
          f"(original rule) vs {int(upstream[0, 0, video_end])} (transformers 5.24); the video's last time "
          f"position is {int(ours[0, 0, video_end - 1])}")

    batch = long_video_batch(config, args.batch)
    tokens = int(batch["attention_mask"].sum())
    t_ours = median_seconds(lambda: model_position_ids(config, **batch), args.repeats)
    t_up = median_seconds(lambda: Qwen2_5_VLModel.get_rope_index(inner, **batch), args.repeats)
    print(f"batch of {args.batch} long-video prompts ({tokens:,} tokens): ours {t_ours * 1e3:.2f} ms, "
          f"upstream get_rope_index {t_up * 1e3:.2f} ms")
    print(f"positions_speedup={t_up / t_ours:.2f}")


if __name__ == "__main__":
    main()
