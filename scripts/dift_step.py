"""One DIFT forward + backward on a synthetic sample: prints the three losses and the CPU/GPU time.

    python scripts/dift_step.py --model .cache/demo/tiny-base [--repeats 5] [--bf16]

The model is a base Qwen2.5-VL checkpoint (latent tokens are added here, as DIFT training does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.collator import DIFTCollator  # noqa: E402
from dift.core.checkpoint import prepare_base_model_for_dift  # noqa: E402
from dift.core.model import LatentQwen2_5_VL  # noqa: E402
from scripts.synthetic_media import moving_square_frames  # noqa: E402


def synthetic_sample(n_frames: int = 8) -> dict:
    frames = moving_square_frames(n_frames, direction="right", camera_dx=1)
    return dict(
        visual=frames,
        question="In which direction does the red square move?\n\nA. Left\nB. Right\nC. Up\nD. Down",
        text_output=("<think>I track the red square. From <output_image> to <output_image> it shifts to "
                     "the right of the frame.</think><answer>B</answer>"),
        helper_images=[frames[0], frames[-1]],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--latent_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    processor = AutoProcessor.from_pretrained(args.model)
    model = LatentQwen2_5_VL.from_pretrained(args.model, dtype=dtype).to(device)
    ids = prepare_base_model_for_dift(model, processor, latent_size=args.latent_size)
    batch = DIFTCollator(processor, args.latent_size, ids)([synthetic_sample()])
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    times = []
    for _ in range(args.repeats + 1):  # the first is a warm-up
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"sequence length {batch['input_ids'].shape[1]}, {out.num_output_images} helper images, "
          f"latent_size {args.latent_size}, device {device}, dtype {dtype}")
    print(f"total_loss={out.loss.item():.4f} ce_loss={out.ce_loss.item():.4f} sim_loss={out.sim_loss.item():.4f}")
    print(f"forward+backward: median {statistics.median(times[1:]) * 1000:.1f} ms over {args.repeats} runs")
    if device == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
