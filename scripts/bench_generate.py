"""Benchmark: batched latent-aware generation against one prompt at a time (the original's evaluation
pattern), on the tiny random checkpoint, measured in the same run.

    python scripts/bench_generate.py [--prompts 16] [--max_new_tokens 64] [--repeats 3] [--threads N]

The same video prompts are generated at batch sizes 1, 4, 8 and 16 (greedy, a fixed number of new
tokens; the random model rarely emits <|im_end|>, so every row runs to max_new_tokens). Prompts are
encoded before the clock starts; each setting keeps its best of `--repeats` runs (the machine is
shared). Prints tokens/s and the ratio to batch 1 (our loop, one prompt at a time) for each, and
for reference the library's own `generate()` one prompt at a time (the original evaluation's
pattern, here without latent handling). The last line is `speedup_at_16=<x>` (against our batch 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.checkpoint import load_latent_model  # noqa: E402
from dift.conversation import question_with_options, render_generation_prompt  # noqa: E402
from dift.generation import SamplingConfig, generate_with_latents  # noqa: E402
from dift.inputs import encode_batch  # noqa: E402
from scripts.build_tiny_model import write_checkpoint  # noqa: E402
from scripts.synthetic_media import DIRECTIONS, moving_square_frames  # noqa: E402

BATCH_SIZES = (1, 4, 8, 16)


def make_prompts(loaded, n: int) -> tuple[list[str], list[list]]:
    """n video prompts (4 frames each) with questions of different lengths."""
    directions = sorted(DIRECTIONS)
    texts, visuals = [], []
    for i in range(n):
        frames = moving_square_frames(4, direction=directions[i % len(directions)], seed=i)
        question = question_with_options("Where does the red square move?" + " Look closely." * (i % 5),
                                         ["A. Left", "B. Right", "C. Up", "D. Down"])
        texts.append(render_generation_prompt(loaded.processor, frames, question))
        visuals.append(frames)
    return texts, visuals


def time_generation(loaded, batches: list, sampling: SamplingConfig) -> tuple[float, int]:
    """Seconds to generate every batch, and the number of tokens generated."""
    start = time.perf_counter()
    n_tokens = 0
    for inputs in batches:
        results = generate_with_latents(loaded.model, inputs, loaded.token_ids, loaded.latent.latent_size, sampling,
                                        seeds=list(range(inputs["input_ids"].shape[0])))
        n_tokens += sum(len(r.token_ids) for r in results)
    return time.perf_counter() - start, n_tokens


def time_upstream_generate(loaded, batches: list, sampling: SamplingConfig) -> tuple[float, int]:
    """The same, with the library's `generate` (no latent handling; every field explicit, and
    min_new_tokens = max_new_tokens so it produces as many tokens as our loop)."""
    t = loaded.token_ids
    config = GenerationConfig(max_new_tokens=sampling.max_new_tokens, min_new_tokens=sampling.max_new_tokens,
                              do_sample=False, repetition_penalty=1.0, eos_token_id=t.im_end, pad_token_id=t.text_pad)
    start = time.perf_counter()
    n_tokens = 0
    with torch.no_grad():
        for inputs in batches:
            out = loaded.model.generate(**inputs, generation_config=config)
            n_tokens += out[:, inputs["input_ids"].shape[1]:].numel()
    return time.perf_counter() - start, n_tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; on a shared machine 1 avoids OpenMP contention)")
    parser.add_argument("--model", default=None, help="a DIFT checkpoint (default: build the tiny one in a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or write_checkpoint(Path(tmp) / "tiny-latent", preset="tiny", seed=0, latent=True)
        loaded = load_latent_model(path, dtype=torch.float32)
        texts, visuals = make_prompts(loaded, args.prompts)
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
        settings = {}
        for bs in BATCH_SIZES:
            if bs > args.prompts:
                continue
            settings[bs] = [encode_batch(loaded.processor, texts[i:i + bs], visuals[i:i + bs], padding_side="left")
                            for i in range(0, args.prompts, bs)]
        time_generation(loaded, settings[min(settings)][:1], sampling)  # warm-up
        best = {bs: float("inf") for bs in settings}
        best_upstream, tokens = float("inf"), {}
        for _ in range(args.repeats):  # interleaved, so a burst of load on the shared machine hits all settings
            for bs, batches in settings.items():
                seconds, tokens[bs] = time_generation(loaded, batches, sampling)
                best[bs] = min(best[bs], seconds)
            seconds, tokens_upstream = time_upstream_generate(loaded, settings[1], sampling)
            best_upstream = min(best_upstream, seconds)

    base = tokens[1] / best[1]
    print(f"{args.prompts} video prompts, {args.max_new_tokens} new tokens each, greedy, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    for bs in settings:
        rate = tokens[bs] / best[bs]
        print(f"batch {bs:>2}: {rate:8.1f} tokens/s  ({best[bs]:.2f} s)  x{rate / base:.2f} vs one at a time")
    top = max(settings)
    upstream = tokens_upstream / best_upstream
    print(f"upstream generate(), one at a time: {upstream:8.1f} tokens/s  ({best_upstream:.2f} s); "
          f"batch {top} is x{tokens[top] / best[top] / upstream:.2f} of it")
    print(f"speedup_at_{top}={tokens[top] / best[top] / base:.2f}")


if __name__ == "__main__":
    main()
