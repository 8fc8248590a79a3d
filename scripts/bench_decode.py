"""Benchmark: decode tokens/s of latent generation at given batch sizes (run by scripts/gpu_check.sh).

    python scripts/bench_decode.py --model DIR [--batch_sizes 1,32] [--max_new_tokens 256] [--repeats 2]

For each batch size, on one short image prompt per row (prefill is small): the engine with its decode
step compiled (CUDA graphs on CUDA), the engine eager, and the library's `generate()` (no latent
handling). The engine runs force a latent block (start, latent_size pads, end) every 32 tokens in
every row, so token and latent steps are both timed. Decode rate = rows x (N - 1) new tokens over
the time of an N-token run minus that of a 1-token run (prefill and first token cancel out); best of
`--repeats`, warm-ups (and compiles) not counted. At batch 1: the fraction of the memory-bandwidth
roofline, the language model's weights read once per token (`--bandwidth_tbs`, H100 SXM: 3.35).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.core.checkpoint import load_latent_model  # noqa: E402
from dift.core.conversation import render_generation_prompt  # noqa: E402
from dift.core.engine import Engine  # noqa: E402
from dift.core.generation import SamplingConfig  # noqa: E402
from dift.core.inputs import encode_batch  # noqa: E402
from scripts.bench_generate import upstream_generation_config  # noqa: E402
from scripts.synthetic_media import moving_square_frames  # noqa: E402

LATENT_EVERY = 32


def latent_every(n: int, start_id: int):
    """The engine's logits processor: every row opens a latent block at steps 0, n, 2n, ..."""
    def processor(steps, rows, scores):
        due = (steps % n == 0)[:, None] & (torch.arange(scores.shape[-1], device=scores.device) == start_id)
        return torch.where(due, scores + 1e4, scores)
    return processor


def timed(run) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_rate(run, rows: int, max_new: int, repeats: int) -> float:
    """rows x (max_new - 1) / (t(max_new) - t(1)), each the best of `repeats` after one warm-up."""
    run(max_new), run(1)
    full = min(timed(lambda: run(max_new)) for _ in range(repeats))
    first = min(timed(lambda: run(1)) for _ in range(repeats))
    return rows * (max_new - 1) / max(full - first, 1e-9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a DIFT-ready checkpoint (scripts/build_tiny_model.py --latent)")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="time the compiled engine too (auto: on CUDA only)")
    parser.add_argument("--bandwidth_tbs", type=float, default=3.35, help="memory bandwidth for the roofline (TB/s)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    with_compile = args.compile == "on" or (args.compile == "auto" and args.device.startswith("cuda"))
    loaded = load_latent_model(args.model, dtype=dtype, device=args.device)
    model, t, latent_size = loaded.model, loaded.token_ids, loaded.latent.latent_size
    image = moving_square_frames(1, direction="right")[0].resize((56, 56))
    text = render_generation_prompt(loaded.processor, image, "Where is the square?")
    lm = model.model.language_model
    lm_bytes = 2 * (sum(p.numel() for p in lm.parameters())
                    + (0 if model.config.tie_word_embeddings else model.lm_head.weight.numel()))  # bf16
    print(f"{args.device} {str(dtype).removeprefix('torch.')}, language model {lm_bytes / 2e9:.2f} B parameters, "
          f"{args.max_new_tokens} new tokens, a latent block every {LATENT_EVERY} tokens in the engine runs")

    for rows in (int(b) for b in args.batch_sizes.split(",")):
        inputs = encode_batch(loaded.processor, [text] * rows, [image] * rows, padding_side="left")
        rates = {}
        capacity = inputs["input_ids"].shape[1] + args.max_new_tokens
        for compiled in ([True] if with_compile else []) + [False]:
            engine = Engine(model, t, latent_size, rows, compile=compiled)
            engine.reserve(capacity)
            engine.warm_up()
            after_warm_up = engine.compiles

            def run(n, engine=engine, inputs=inputs):
                return engine.generate(inputs, SamplingConfig(max_new_tokens=n, do_sample=False), stop_ids=[],
                                       return_logprobs=False, logits_processor=latent_every(LATENT_EVERY, t.start))

            rates["engine compiled" if compiled else "engine eager"] = decode_rate(run, rows, args.max_new_tokens,
                                                                                   args.repeats)
            if compiled:
                print(f"batch {rows}: compiles after the warm-up: {engine.compiles - after_warm_up}")
            del engine

        def upstream(n, inputs=inputs):
            config = upstream_generation_config(t, SamplingConfig(max_new_tokens=n, do_sample=False), [t.im_end])
            with torch.no_grad():
                return model.generate(**inputs.to(model.device), generation_config=config)

        rates["upstream generate()"] = decode_rate(upstream, rows, args.max_new_tokens, args.repeats)
        print(f"batch {rows}: " + ", ".join(f"{name} {rate:.1f} tok/s" for name, rate in rates.items()))
        if rows == 1:
            for name, rate in rates.items():
                print(f"batch 1 roofline ({args.bandwidth_tbs} TB/s, {lm_bytes / 1e9:.2f} GB per token): {name} "
                      f"{rate * lm_bytes / (args.bandwidth_tbs * 1e12):.1%}")
    if args.device.startswith("cuda"):
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
