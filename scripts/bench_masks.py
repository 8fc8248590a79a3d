"""Benchmark of the masks step's SAM3 stage: frames per second of text-prompted segmentation.

Measures, in one run on the same frames: the original's way (one frame per forward; baseline),
ours (frames batched through Sam3Model, best-scoring instance kept), and tracking (Sam3VideoModel,
one prompt propagated through the clip); prints frames/s and the ratio to the baseline.
Random weights (speed does not depend on them): `--full_size` builds SAM3's real shapes (1008 px,
for a GPU), the default the tiny test model (CPU).

    python scripts/bench_masks.py --frames 16 [--full_size --device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from preprocess.masks import Sam3Segmenter  # noqa: E402
from scripts.build_tiny_sam3 import write_tiny_sam3  # noqa: E402
from scripts.synthetic_media import moving_square_frames  # noqa: E402


def time_segmenter(segmenter: Sam3Segmenter, frames, repeats: int) -> float:
    segmenter.segment(frames[:2], "red square")  # warm-up (kernels, allocator)
    sync = segmenter.torch.cuda.synchronize if segmenter.device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        segmenter.segment(frames, "red square")
    sync()
    return repeats * len(frames) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full_size", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", help="an existing SAM3 folder (default: build a random one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    frames = moving_square_frames(args.frames, args.width, args.height, "right", 4, 40, camera_dx=2)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(write_tiny_sam3(Path(tmp) / "sam3", full_size=args.full_size))
        results = {}
        for name, tracking, batch in (("per-frame, batch 1 (original)", False, 1),
                                      (f"per-frame, batch {args.batch_size}", False, args.batch_size),
                                      ("tracking (video model)", True, 1)):
            seg = Sam3Segmenter(model, tracking, 0.0, 0.5, batch, args.device, args.dtype)
            results[name] = time_segmenter(seg, frames, args.repeats)
            del seg
    base = next(iter(results.values()))
    print(f"SAM3 {'full-size' if args.full_size else 'tiny'} random weights, {args.frames} frames "
          f"{args.width}x{args.height}, device {args.device}")
    for name, fps in results.items():
        print(f"  {name:32s} {fps:8.2f} frames/s   x{fps / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
