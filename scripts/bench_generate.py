"""Benchmark: batched latent-aware generation against one prompt at a time (the original's evaluation
pattern), on the tiny random checkpoint, measured in the same run.

    python scripts/bench_generate.py [--prompts 16] [--max_new_tokens 64] [--repeats 3] [--threads N] [--logprobs]
    python scripts/bench_generate.py --preset 3b --batch_sizes 1,8,32 --prompts 32   # on a GPU, bf16
    python scripts/bench_generate.py --only sampler --threads 1 --repeats 5   # top-p sampling alone

The same video prompts are generated at batch sizes 1, 4, 8 and 16 (greedy, a fixed number of new
tokens; the random model rarely emits <|im_end|>, so every row runs to max_new_tokens), without
per-token log-probs as evaluation and inference run it (`--logprobs`: with them, as RL does). Prompts are
encoded before the clock starts; each setting keeps its best of `--repeats` runs (the machine is
shared). The baseline, timed in the same run, is the original evaluation's pattern: the library's
`generate()` on one prompt at a time (every field explicit; without the original's latent handling,
so if anything faster than it). Prints tokens/s for each setting with its ratio to that baseline and
to our own loop at batch 1 (the pure batching gain). The last line is `speedup_at_16=<x>`: batch 16
against the baseline.
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
from dift.core.checkpoint import load_latent_model  # noqa: E402
from dift.core.conversation import question_with_options, render_generation_prompt  # noqa: E402
from dift.core.generation import SamplingConfig, generate_with_latents  # noqa: E402
from dift.core.inputs import encode_batch  # noqa: E402
from dift.core.sampling import sample_from_scores  # noqa: E402
from scripts.build_tiny_model import write_checkpoint  # noqa: E402
from scripts.synthetic_media import DIRECTIONS, moving_square_frames  # noqa: E402


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


def time_generation(loaded, batches: list, sampling: SamplingConfig, logprobs: bool) -> tuple[float, int]:
    """Seconds to generate every batch, and the number of tokens generated."""
    start = time.perf_counter()
    n_tokens = 0
    for inputs in batches:
        results = generate_with_latents(loaded.model, inputs, loaded.token_ids, loaded.latent.latent_size, sampling,
                                        seeds=list(range(inputs["input_ids"].shape[0])), return_logprobs=logprobs)
        n_tokens += sum(len(r.token_ids) for r in results)
    return time.perf_counter() - start, n_tokens


def upstream_generation_config(token_ids, sampling: SamplingConfig, stop_ids) -> GenerationConfig:
    """The library `generate()` settings of a baseline that matches `sampling`: every field explicit
    (the original's inherited top-k 1 and repetition penalty 1.05 are not reproduced), and
    min_new_tokens = max_new_tokens, so the baseline decodes as many tokens as our loop."""
    sampler = (dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
               if sampling.do_sample else dict(do_sample=False))
    return GenerationConfig(max_new_tokens=sampling.max_new_tokens, min_new_tokens=sampling.max_new_tokens,
                            repetition_penalty=1.0, eos_token_id=list(stop_ids), pad_token_id=token_ids.text_pad,
                            **sampler)


def time_upstream_generate(loaded, batches: list, sampling: SamplingConfig) -> tuple[float, int]:
    """The same, with the library's `generate` (no latent handling)."""
    config = upstream_generation_config(loaded.token_ids, sampling, [loaded.token_ids.im_end])
    start = time.perf_counter()
    n_tokens = 0
    with torch.no_grad():
        for inputs in batches:
            out = loaded.model.generate(**inputs.to(loaded.model.device), generation_config=config)
            n_tokens += out[:, inputs["input_ids"].shape[1]:].numel()
    if out.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, n_tokens


def sample_from_scores_sorted(scores: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    """The sampler before dift.core.sampling, kept as the baseline: the nucleus from the top 1,024
    candidates, else from a sort of the whole vocabulary; inverse CDF in descending probability order."""
    def draw(values, order, u):
        kept = values.masked_fill(values.cumsum(dim=-1) - values >= top_p, 0.0)
        cdf = kept.cumsum(dim=-1)
        index = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.shape[-1] - 1)
        return order.gather(-1, index)[:, 0]

    probs = torch.softmax(scores.float(), dim=-1)
    top, order = probs.topk(min(1024, probs.shape[-1]), dim=-1)
    covered = top.sum(dim=-1) >= top_p
    tokens = torch.empty(len(probs), dtype=torch.long)
    tokens[covered] = draw(top[covered], order[covered], uniforms[covered])
    full, full_order = torch.sort(probs[~covered], dim=-1, descending=True)
    tokens[~covered] = draw(full, full_order, uniforms[~covered])
    return tokens


def bench_sampler(repeats: int, rows: int = 64, vocab: int = 151936) -> None:
    """Top-p sampling (SamplingConfig's default top_p, temperature 1.0) of rows x vocabulary scores:
    dift.core.sampling's sort-free sampler against the sort-based one, best of `repeats` each,
    interleaved. Wide: randn logits (a random model's nucleus: most of the vocabulary); peaked:
    randn x 8 (a trained model's: the top candidates hold it). Last line: sampler_speedup=<x> (wide)."""
    top_p = SamplingConfig().top_p
    gen = torch.Generator().manual_seed(0)
    uniforms = torch.rand(rows, generator=gen)
    speedup = None
    for name, scale in (("peaked", 8.0), ("wide", 1.0)):
        scores = torch.randn(rows, vocab, generator=gen) * scale
        best = {"sorted": float("inf"), "sort-free": float("inf")}
        for _ in range(repeats):
            for label, sampler in (("sorted", sample_from_scores_sorted), ("sort-free", sample_from_scores)):
                start = time.perf_counter()
                sampler(scores, uniforms, top_p)
                best[label] = min(best[label], time.perf_counter() - start)
        speedup = best["sorted"] / best["sort-free"]
        print(f"sampler, {name} logits, {rows} x {vocab}, top_p {top_p}, {torch.get_num_threads()} threads, best of "
              f"{repeats}: sorted {best['sorted'] * 1e3:.1f} ms, sort-free {best['sort-free'] * 1e3:.1f} ms, "
              f"x{speedup:.2f}")
    print(f"sampler_speedup={speedup:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; on a shared machine 1 avoids OpenMP contention)")
    parser.add_argument("--logprobs", action="store_true", help="also compute per-token log-probs (RL's pattern)")
    parser.add_argument("--batch_sizes", default="1,4,8,16", help="comma-separated; batch 1 is always measured")
    parser.add_argument("--model", default=None, help="a DIFT checkpoint (default: build a random one in a temp dir)")
    parser.add_argument("--preset", choices=["tiny", "3b"], default="tiny", help="the random checkpoint's shapes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--only", choices=["sampler"], default=None,
                        help="sampler: only time top-p sampling of 64 x 151,936 scores (sort-free vs sorted)")
    args = parser.parse_args(argv)
    batch_sizes = sorted({1, *(int(b) for b in args.batch_sizes.split(","))})
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
        torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only == "sampler":
        return bench_sampler(args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or write_checkpoint(Path(tmp) / "latent", preset=args.preset, seed=0, latent=True,
                                              device=args.device)
        loaded = load_latent_model(path, dtype=dtype, device=args.device)
        texts, visuals = make_prompts(loaded, args.prompts)
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
        settings = {}
        for bs in batch_sizes:
            if bs > args.prompts:
                continue
            settings[bs] = [encode_batch(loaded.processor, texts[i:i + bs], visuals[i:i + bs], padding_side="left")
                            for i in range(0, args.prompts, bs)]
        time_generation(loaded, settings[min(settings)][:1], sampling, args.logprobs)  # warm-up
        best = {bs: float("inf") for bs in settings}
        best_upstream, tokens = float("inf"), {}
        for _ in range(args.repeats):  # interleaved, so a burst of load on the shared machine hits all settings
            for bs, batches in settings.items():
                seconds, tokens[bs] = time_generation(loaded, batches, sampling, args.logprobs)
                best[bs] = min(best[bs], seconds)
            seconds, tokens_upstream = time_upstream_generate(loaded, settings[1], sampling)
            best_upstream = min(best_upstream, seconds)

    ours_one = tokens[1] / best[1]
    original = tokens_upstream / best_upstream
    print(f"{args.prompts} video prompts, {args.max_new_tokens} new tokens each, greedy, "
          f"{'with' if args.logprobs else 'without'} log-probs, "
          f"{args.device} {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"one at a time, upstream generate() (the original's pattern): {original:8.1f} tokens/s  "
          f"({best_upstream:.2f} s)")
    for bs in settings:
        rate = tokens[bs] / best[bs]
        print(f"batch {bs:>2}, ours: {rate:8.1f} tokens/s  ({best[bs]:.2f} s)  x{rate / original:.2f} vs the "
              f"original's pattern, x{rate / ours_one:.2f} vs our batch 1")
    if args.device.startswith("cuda"):
        # Batch-1 decoding reads every weight once per token: compare this with the GPU's memory bandwidth.
        weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        print(f"batch 1 effective weight traffic: {weight_bytes / 1e9:.2f} GB per token x {ours_one:.1f} tokens/s = "
              f"{weight_bytes * ours_one / 1e9:.0f} GB/s (prefill included); peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    top = max(settings)
    print(f"speedup_at_{top}={tokens[top] / best[top] / original:.2f}")

if __name__ == "__main__":
    main()
