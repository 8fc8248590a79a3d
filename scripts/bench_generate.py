"""Benchmark: batched latent-aware generation against one prompt at a time (the original's evaluation
pattern), on the tiny random checkpoint, measured in the same run.

    python scripts/bench_generate.py [--prompts 16] [--max_new_tokens 64] [--repeats 3] [--threads N] [--logprobs]
    python scripts/bench_generate.py --preset 3b --batch_sizes 1,8,32 --prompts 32   # on a GPU, bf16
    python scripts/bench_generate.py --sections sampler --threads 1 --repeats 5   # top-p sampling alone

The same video prompts are generated at batch sizes 1, 4, 8 and 16 (greedy, a fixed number of new
tokens; the random model rarely emits <|im_end|>, so every row runs to max_new_tokens), without
per-token log-probs as evaluation and inference run it (`--logprobs`: with them, as RL does). Prompts are
encoded before the clock starts; each setting keeps its best of `--repeats` runs (the machine is
shared). The baseline, timed in the same run, is the original evaluation's pattern: the library's
`generate()` on one prompt at a time (every field explicit; without the original's latent handling,
so if anything faster than it). Prints tokens/s for each setting with its ratio to that baseline and
to our own loop at batch 1 (the pure batching gain). The last line is `speedup_at_16=<x>`: batch 16
against the baseline.

`sampler_speedup=`: top-p sampling of 64 x 151,936 scores, the sort-free sampler against the
sort-based one. Engine sections (`--sections`, default all; `dift.core.engine`), warm-ups and compiles not timed, the
same tokens checked: `engine_speedup=` the engine against the reference loop on one batch of
`--engine_batch` rows; `compile_speedup=` its compiled decode step against its eager one;
`continuous_speedup=` an evaluation-like workload (`--eval_questions`, answer lengths drawn from a
long-tailed distribution, enforced by a stop processor, `--engine_batch / 2` slots): continuous
batching against static batching (one batch after another, each waiting for its longest answer),
with the reference loop batch by batch as a third line (`continuous_vs_reference_loop=`).
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
from dift.core.engine import Engine  # noqa: E402
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


# ---------------------------------------------------------------------------------------------
# The engine (dift.core.engine): against the reference loop, compiled against eager, continuous
# against static batching. Each prints its ratio line; warm-ups (and compiles) are not timed.


def _best_of(repeats: int, runs: dict) -> tuple[dict, dict]:
    """Best wall time of each of `runs` (name -> function) over `repeats` rounds, interleaved so that a
    burst of load on the shared machine hits every setting; and each one's last result."""
    best, results = {name: float("inf") for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def bench_engine(loaded, inputs, sampling: SamplingConfig, repeats: int, compile_step: bool = False) -> None:
    """The engine against the reference loop on the same batch (slots = batch size), the same tokens."""
    rows = inputs["input_ids"].shape[0]
    seeds = list(range(rows))
    engine = Engine(loaded.model, loaded.token_ids, loaded.latent.latent_size, rows, compile=compile_step)
    engine.reserve(inputs["input_ids"].shape[1] + sampling.max_new_tokens)
    engine.warm_up()
    engine.generate(inputs, sampling, seeds=seeds, return_logprobs=False)  # warm-up
    times, out = _best_of(repeats, {
        "reference": lambda: generate_with_latents(loaded.model, inputs, loaded.token_ids, loaded.latent.latent_size,
                                                   sampling, seeds=seeds, return_logprobs=False),
        "engine": lambda: engine.generate(inputs, sampling, seeds=seeds, return_logprobs=False)})
    (ref_s, ref_out), (eng_s, eng_out) = (times["reference"], out["reference"]), (times["engine"], out["engine"])
    assert [r.token_ids for r in ref_out] == [r.token_ids for r in eng_out], "engine and reference tokens differ"
    n = sum(len(r.token_ids) for r in eng_out)
    print(f"batch {rows}, {sampling.max_new_tokens} new tokens: reference loop {n / ref_s:8.1f} tokens/s, "
          f"engine{' (compiled)' if compile_step else ''} {n / eng_s:8.1f} tokens/s")
    print(f"engine_speedup={ref_s / eng_s:.2f}")


def bench_compile(loaded, inputs, sampling: SamplingConfig, repeats: int) -> None:
    """The engine's compiled decode step against its eager one (same slots, same batch, same tokens)."""
    rows = inputs["input_ids"].shape[0]
    seeds, runs = list(range(rows)), {}
    for compiled in (False, True):
        engine = Engine(loaded.model, loaded.token_ids, loaded.latent.latent_size, rows, compile=compiled)
        engine.reserve(inputs["input_ids"].shape[1] + sampling.max_new_tokens)
        started = time.perf_counter()
        engine.warm_up()
        engine.generate(inputs, sampling, seeds=seeds, return_logprobs=False)
        if compiled:
            print(f"compile + warm-up (not counted): {time.perf_counter() - started:.1f} s")
            after_warm_up = engine.compiles
        runs[compiled] = lambda e=engine: e.generate(inputs, sampling, seeds=seeds, return_logprobs=False)
    times, outputs = _best_of(repeats, runs)
    print(f"compiles after the warm-up: {engine.compiles - after_warm_up}")
    assert [r.token_ids for r in outputs[False]] == [r.token_ids for r in outputs[True]], "compiled tokens differ"
    n = sum(len(r.token_ids) for r in outputs[True])
    print(f"batch {rows}: engine eager {n / times[False]:8.1f} tokens/s, compiled {n / times[True]:8.1f} tokens/s")
    print(f"compile_speedup={times[False] / times[True]:.2f}")


def long_tailed_lengths(n: int, max_new: int, seed: int = 0) -> torch.Tensor:
    """Answer lengths of an evaluation: most short, a few long (Pareto, shape 1.1, from 8), capped."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen)
    return (8 * u.pow(-1 / 1.1)).long().clamp(max=max_new)


def stop_at(lengths: torch.Tensor, im_end: int):
    """A logits processor that makes row r emit <|im_end|> as its token number lengths[r] (for the
    reference loop's (step, rows) and the engine's (per-slot steps, rows; -1 for an empty slot))."""
    def processor(step, rows, scores):
        target = lengths.to(scores.device)[rows.clamp(min=0)]
        due = (target - 1 <= step) & (rows >= 0)
        return torch.where(due[:, None] & (torch.arange(scores.shape[-1], device=scores.device) == im_end),
                           scores + 1e4, scores)
    return processor


def bench_continuous(loaded, texts, visuals, slots: int, max_new: int, repeats: int) -> None:
    """An evaluation-like workload: len(texts) questions, long-tailed answer lengths, `slots` rows at a
    time. Static batching (the engine on one batch after another, each waiting for its longest answer)
    against continuous batching (a finished answer's slot takes the next question at once)."""
    n, im_end = len(texts), loaded.token_ids.im_end
    lengths = long_tailed_lengths(n, max_new)
    sampling = SamplingConfig(max_new_tokens=max_new, do_sample=False)
    latent_size = loaded.latent.latent_size
    engine = Engine(loaded.model, loaded.token_ids, latent_size, slots)
    chunks = [encode_batch(loaded.processor, texts[i:i + slots], visuals[i:i + slots], padding_side="left")
              for i in range(0, n, slots)]
    engine.reserve(max(c["input_ids"].shape[1] for c in chunks) + max_new)
    engine.warm_up()

    def static():
        return [r for i, c in enumerate(chunks) for r in engine.generate(
            c, sampling, seeds=list(range(c["input_ids"].shape[0])), return_logprobs=False,
            logits_processor=stop_at(lengths[i * slots:(i + 1) * slots], im_end))]

    def continuous():
        taken = iter(chunks)

        def take(_):  # the prompts are encoded before the clock starts, a batch of `slots` at a time
            chunk = next(taken, None)
            return None if chunk is None else (chunk, list(range(chunk["input_ids"].shape[0])))

        return [r for _, r in sorted(engine.run(take, sampling, return_logprobs=False,
                                                logits_processor=stop_at(lengths, im_end)), key=lambda x: x[0])]

    def reference():
        return [r for i, c in enumerate(chunks) for r in generate_with_latents(
            loaded.model, c, loaded.token_ids, latent_size, sampling, seeds=list(range(c["input_ids"].shape[0])),
            return_logprobs=False, logits_processor=stop_at(lengths[i * slots:(i + 1) * slots], im_end))]

    continuous()  # warm-up
    times, out = _best_of(repeats, {"static": static, "continuous": continuous, "reference": reference})
    (static_s, cont_s, ref_s), (static_out, cont_out, ref_out) = (
        [times[k] for k in ("static", "continuous", "reference")], [out[k] for k in ("static", "continuous", "reference")])
    assert [len(r.token_ids) for r in cont_out] == lengths.tolist(), "the stop processor did not hold"
    assert [r.token_ids for r in static_out] == [r.token_ids for r in cont_out] == [r.token_ids for r in ref_out]
    total = int(lengths.sum())
    print(f"{n} questions, {slots} slots, answer lengths 8-{max_new} (mean {lengths.float().mean():.1f}, "
          f"max {int(lengths.max())}): static {total / static_s:8.1f} tokens/s ({static_s:.2f} s), continuous "
          f"{total / cont_s:8.1f} tokens/s ({cont_s:.2f} s), reference loop batch by batch {total / ref_s:8.1f} "
          f"tokens/s ({ref_s:.2f} s)")
    print(f"continuous_speedup={static_s / cont_s:.2f}")
    print(f"continuous_vs_reference_loop={ref_s / cont_s:.2f}")


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
    parser.add_argument("--engine_batch", type=int, default=16, help="batch of the engine and compile sections")
    parser.add_argument("--eval_questions", type=int, default=48, help="questions of the continuous-batching section")
    parser.add_argument("--eval_max_new_tokens", type=int, default=128, help="longest answer there")
    parser.add_argument("--sections", default="sampler,engine,compile,continuous,batching",
                        help="comma-separated sections to run (sampler needs no model)")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    batch_sizes = sorted({1, *(int(b) for b in args.batch_sizes.split(","))})
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
        torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "sampler" in sections:
        bench_sampler(args.repeats)
    if not sections - {"sampler"}:
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or write_checkpoint(Path(tmp) / "latent", preset=args.preset, seed=0, latent=True,
                                              device=args.device)
        loaded = load_latent_model(path, dtype=dtype, device=args.device)
        texts, visuals = make_prompts(loaded, args.prompts)
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
        if sections & {"engine", "compile"}:
            batch = encode_batch(loaded.processor, texts[:args.engine_batch], visuals[:args.engine_batch],
                                 padding_side="left")
            if "engine" in sections:
                bench_engine(loaded, batch, sampling, args.repeats)
            if "compile" in sections:
                bench_compile(loaded, batch, sampling, args.repeats)
        if "continuous" in sections:
            eval_texts, eval_visuals = make_prompts(loaded, args.eval_questions)
            bench_continuous(loaded, eval_texts, eval_visuals, args.engine_batch // 2, args.eval_max_new_tokens,
                             args.repeats)
        if "batching" not in sections:
            return
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
