"""Benchmark: DSR evaluation questions/s, ours against the original's loop, same model, same run.

    python scripts/bench_eval.py [--per_type 2 --max_new_tokens 256 --batch_size 16] [--sample]

Both sides load the same tiny random-weight checkpoint (built here) and answer the same synthetic
benchmark (scripts/make_demo_benchmark.py) with the same prompts and sampling settings; the model
load is outside the timings.
- original: frames re-extracted for every question into a fresh folder by a 4-thread pool, each
  question answered as its extraction finishes, one at a time, by the library's `generate()` (the
  original's per-question call; here without its latent handling, so if anything faster);
- ours: `evaluation.evaluate.evaluate_shard`: frame cache warm (a previous run filled it), frames
  of upcoming batches prepared by a thread pool while the model runs, batches of `--batch_size`,
  results appended to a JSONL.
Decoding is greedy unless `--sample` (the original's temperature 0.7, top_p 0.9). The random model
never ends an answer, so every question decodes `--max_new_tokens` tokens on both sides (DSR answers
with a chain of thought run to hundreds of tokens).
Last line: `eval_speedup=<ours q/s / original q/s>`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.core.checkpoint import load_latent_model  # noqa: E402
from dift.core.conversation import render_generation_prompt  # noqa: E402
from dift.core.extraction import extract_answer  # noqa: E402
from dift.core.frames import (  # noqa: E402
    CACHE_JPEG_QUALITY,
    FrameCache,
    decode_video_frames,
    load_frame_folder,
    write_frames,
)
from dift.core.generation import SamplingConfig, decode_answer_text  # noqa: E402
from dift.core.inputs import encode_batch  # noqa: E402
from evaluation import dsr_eval, evaluate  # noqa: E402
from evaluation.benchmark import load_benchmark  # noqa: E402
from evaluation.results import ResultsWriter  # noqa: E402
from scripts.bench_generate import upstream_generation_config  # noqa: E402
from scripts.build_tiny_model import write_checkpoint  # noqa: E402
from scripts.make_demo_benchmark import build_benchmark  # noqa: E402


def original_loop(loaded, items, video_root: Path, sampling: SamplingConfig, frame_root: Path,
                  workers: int = 4) -> int:
    """The original's evaluation loop: extraction per question into a fresh folder (thread pool),
    questions answered in extraction-completion order, one at a time by `generate()`."""
    t = loaded.token_ids
    config = upstream_generation_config(t, sampling, [t.im_end, t.text_pad])

    def extract(item):
        folder = frame_root / f"{item.index}_{item.video_id}"
        write_frames(decode_video_frames(video_root / f"{item.video_id}.mp4"), folder, quality=CACHE_JPEG_QUALITY)
        return item, load_frame_folder(folder)

    answered = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(extract, it) for it in items]):
            item, frames = future.result()
            prompt = render_generation_prompt(loaded.processor, frames, item.question_text)
            inputs = encode_batch(loaded.processor, [prompt], [frames]).to(loaded.model.device)
            with torch.no_grad():
                output = loaded.model.generate(**inputs, generation_config=config)
            completion = output[0, inputs["input_ids"].shape[1]:].tolist()
            extract_answer(decode_answer_text(loaded.processor.tokenizer, completion))
            answered += 1
    return answered


def ours(loaded, items, args: dsr_eval.EvalArguments, out: Path) -> int:
    out.unlink(missing_ok=True)
    with ResultsWriter(out) as writer:
        sampling, _ = args.sampling(None)  # every field from the flags (bench_eval passes them all)
        evaluate.evaluate_shard(loaded, items, args, sampling, writer, show_progress=False)
    return sum(1 for _ in out.open())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per_type", type=int, default=2, help="questions per sub-task (13 sub-tasks)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--sample", action="store_true", help="the original's sampling (temperature 0.7, "
                        "top_p 0.9) on both sides instead of greedy decoding")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as scratch:
        run(args, Path(args.work or scratch))


def run(args, work: Path) -> None:
    model_dir = write_checkpoint(work / "tiny-latent", latent=True)
    bench = build_benchmark(work / "bench", per_type=args.per_type, frames=16, fps=4, size=112)
    items = load_benchmark(bench / "benchmark.parquet")
    loaded = load_latent_model(model_dir, dtype=torch.float32, device="cpu")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=0.7,
                              top_p=0.9)
    eval_args = dsr_eval.parse_args([
        "--video_root", str(bench / "videos"), "--frame_root", str(work / "frame_cache"),
        "--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers),
        "--max_new_tokens", str(args.max_new_tokens), "--temperature", "0.7", "--top_p", "0.9",
        *([] if args.sample else ["--greedy"])])
    cache = FrameCache(eval_args.frame_root)
    for it in items:  # warm the cache, as any run after the first finds it
        cache.frame_paths(bench / "videos" / f"{it.video_id}.mp4")

    t0 = time.perf_counter()
    n_orig = original_loop(loaded, items, bench / "videos", sampling, Path(tempfile.mkdtemp(dir=work)),
                           workers=args.num_workers)
    t_orig = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_ours = ours(loaded, items, eval_args, work / "results.jsonl")
    t_ours = time.perf_counter() - t0
    assert n_orig == n_ours == len(items), (n_orig, n_ours, len(items))

    qps_orig, qps_ours = n_orig / t_orig, n_ours / t_ours
    print(f"questions: {len(items)}, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}, "
          f"{'sampled' if args.sample else 'greedy'}, torch threads {torch.get_num_threads()}")
    print(f"original loop: {t_orig:7.2f} s  {qps_orig:6.2f} q/s")
    print(f"ours:          {t_ours:7.2f} s  {qps_ours:6.2f} q/s")
    print(f"eval_speedup={qps_ours / qps_orig:.2f}")


if __name__ == "__main__":
    main()
