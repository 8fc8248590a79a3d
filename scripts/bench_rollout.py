"""Benchmark: 4DRL rollouts with shared prefixes (each prompt's vision encoding and prefill once, its KV
cache repeated to its G rows) against G separate prefills (every prompt G times in the batch), on the
tiny random checkpoint, measured in the same run.

    python scripts/bench_rollout.py [--prompts 8] [--group 8] [--frames 16] [--side 448] [--max_new_tokens 64]
    python scripts/bench_rollout.py --preset 3b --device cuda   # on a GPU, bf16

The RL prompt shape: each prompt a 16-frame video with its longer side 448 pixels (the RL frame cap),
a multiple-choice question; sampling as 4DRL samples (temperature 1.0, top-p 0.9, top-k off, every
row its own seed, log-probs on). First both ways run at the full length and must give identical
tokens (checked, not assumed). Then, timed (best of `--repeats`; the machine may be shared):
- vision encoding + prefill: generation of one greedy token without log-probs, both ways
  -> `prefill_speedup=<x>`;
- the whole rollout at `--max_new_tokens`, both ways, with the decode share of each
  -> `rollout_speedup=<x>` (the last line).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.core.checkpoint import load_latent_model  # noqa: E402
from dift.core.conversation import question_with_options, render_generation_prompt  # noqa: E402
from dift.core.generation import SamplingConfig, generate_with_latents  # noqa: E402
from dift.core.inputs import encode_batch  # noqa: E402
from scripts.build_tiny_model import write_checkpoint  # noqa: E402
from scripts.synthetic_media import DIRECTIONS, moving_square_frames  # noqa: E402


def rl_prompts(processor, n: int, frames: int, side: int) -> tuple[list[str], list[list]]:
    """n video prompts in the RL shape: `frames` frames, longer side `side` (16:9), a 4-option question."""
    directions = sorted(DIRECTIONS)
    height = max(28, side * 9 // 16)
    texts, visuals = [], []
    for i in range(n):
        video = moving_square_frames(frames, width=side, height=height, direction=directions[i % len(directions)],
                                     seed=i)
        question = question_with_options("Relative to the camera, where does the red square move?" + " Look again." * i,
                                         ["A. Left", "B. Right", "C. Up", "D. Down"])
        texts.append(render_generation_prompt(processor, video, question))
        visuals.append(video)
    return texts, visuals


def rollout(loaded, inputs, sampling: SamplingConfig, seeds: list[int], group: int, logprobs: bool = True):
    return generate_with_latents(loaded.model, inputs, loaded.token_ids, loaded.latent.latent_size, sampling,
                                 seeds=seeds, group_size=group, return_logprobs=logprobs)


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--side", type=int, default=448, help="longer side of each frame in pixels")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--preset", choices=["tiny", "3b"], default="tiny", help="the random checkpoint's shapes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(Path(tmp) / "latent", preset=args.preset, seed=0, latent=True, device=args.device)
        loaded = load_latent_model(path, dtype=dtype, device=args.device)
        texts, visuals = rl_prompts(loaded.processor, args.prompts, args.frames, args.side)
        g = args.group
        shared = encode_batch(loaded.processor, texts, visuals, padding_side="left")
        separate = encode_batch(loaded.processor, [t for t in texts for _ in range(g)],
                                [v for v in visuals for _ in range(g)], padding_side="left")
        seeds = list(range(args.prompts * g))
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_p=0.9,
                                  top_k=0, repetition_penalty=1.0)
        # Vision encoding + prefill alone: one greedy token without log-probs (an argmax, where a sampled
        # first token would add a top-p pass over the vocabulary of every row, the same both ways).
        one_token = dataclasses.replace(sampling, max_new_tokens=1, do_sample=False)
        vision_tokens = int(shared["video_grid_thw"].prod(dim=-1).sum()) // 4
        print(f"{args.prompts} prompts x G {g}, {args.frames} frames of {args.side} px longer side "
              f"({vision_tokens // args.prompts} vision tokens, {shared['input_ids'].shape[1]} prompt tokens each), "
              f"{args.max_new_tokens} new tokens, {args.device} {str(dtype).split('.')[-1]}, "
              f"{torch.get_num_threads()} thread(s)")

        a = rollout(loaded, shared, sampling, seeds, g)
        b = rollout(loaded, separate, sampling, seeds, 1)
        assert [r.token_ids for r in a] == [r.token_ids for r in b], "shared-prefix tokens differ from separate prefills"
        lp = max((x.logprobs - y.logprobs).abs().max().item() for x, y in zip(a, b))
        print(f"identical tokens: {sum(len(r.token_ids) for r in a)} in {len(a)} rows; max |log-prob diff| {lp:.2e}")

        prefill_shared = best_seconds(lambda: rollout(loaded, shared, one_token, seeds, g, False), args.repeats)
        prefill_separate = best_seconds(lambda: rollout(loaded, separate, one_token, seeds, 1, False), args.repeats)
        print(f"vision encoding + prefill: shared {prefill_shared:.2f} s, separate {prefill_separate:.2f} s")
        print(f"prefill_speedup={prefill_separate / prefill_shared:.2f}")
        full_shared = best_seconds(lambda: rollout(loaded, shared, sampling, seeds, g), args.repeats)
        full_separate = best_seconds(lambda: rollout(loaded, separate, sampling, seeds, 1), args.repeats)
        for name, full, prefill in (("shared", full_shared, prefill_shared), ("separate", full_separate,
                                                                              prefill_separate)):
            print(f"whole rollout, {name}: {full:.2f} s, decode {max(full - prefill, 0.0):.2f} s "
                  f"({max(full - prefill, 0.0) / full:.0%})")
        print(f"rollout_speedup={full_separate / full_shared:.2f}")


if __name__ == "__main__":
    main()
