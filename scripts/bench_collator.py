"""Benchmark: our DIFT collator against the original's algorithm, measured in the same run.

    python scripts/bench_collator.py [--model DIR] [--batch 8] [--frames 32] [--size 448] [--repeats 3]

Inputs: `--batch` video samples of `--frames` frames of `--size`^2 px (32 x 448^2 gives 4,096
video tokens per sample) with two helper images each. The baseline follows spec
model_and_dift.md section 3 as the original does it: three processor passes (user view -> video
pixels, assistant view -> helper pixels, full conversation -> ids), each fitting the visuals again,
then per-token Python loops for latent-pad rewriting, labels and the image-out mask. Ours:
`dift.collator.DIFTCollator` (one processor pass, one image-processor pass, tensor ops).
The outputs of both are checked equal before timing. Prints the whole-collator times, the
label/mask part alone, and last `collator_speedup=<x>` (whole collator, baseline / ours).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.collator import DIFTCollator, assistant_token_id, build_labels, check_latent_blocks  # noqa: E402
from dift.core.checkpoint import load_processor  # noqa: E402
from dift.core.conversation import OUTPUT_FORMAT_SUFFIX  # noqa: E402
from dift.core.frames import FRAME_FPS  # noqa: E402
from dift.core.inputs import encode_batch, encode_helper_images, prepare_visual  # noqa: E402
from dift.core.latent_ops import IGNORE_INDEX, build_image_out_mask  # noqa: E402
from dift.core.tokens import (  # noqa: E402
    IMAGE_PAD,
    LATENT_END,
    LATENT_START,
    OUTPUT_IMAGE_PLACEHOLDER,
    VISION_END,
    VISION_START,
    add_latent_tokens,
)
from scripts.synthetic_media import moving_square_frames  # noqa: E402

log = logging.getLogger("bench_collator")


# ---------------------------------------------------------------------------------------------
# The baseline: the original's algorithm (spec section 3), written out as it works there.


def baseline_texts(processor, sample) -> tuple[str, str, str]:
    """(user view, assistant view, full conversation) rendered from chat messages with image items."""
    user = {"role": "user", "content": [{"type": "video", "video": sample["visual"]},
                                        {"type": "text", "text": sample["question"] + OUTPUT_FORMAT_SUFFIX}]}
    assistant_items = [{"type": "image"} for _ in sample["helper_images"]]
    assistant = {"role": "assistant", "content": [*assistant_items, {"type": "text", "text": sample["text_output"]}]}
    user_text = processor.apply_chat_template([user], tokenize=False)
    helper_text = processor.apply_chat_template([assistant], tokenize=False)
    full = processor.apply_chat_template([user, assistant], tokenize=False)
    # Assistant part: the template's image blocks are deleted, each <output_image> becomes a vision
    # block, and assistant-side vision blocks become latent blocks.
    head, tail = full.rsplit("<|im_start|>assistant", 1)
    block = VISION_START + IMAGE_PAD + VISION_END
    tail = tail.replace(block, "").replace(OUTPUT_IMAGE_PLACEHOLDER, block)
    tail = tail.replace(block, LATENT_START + IMAGE_PAD + LATENT_END)
    return user_text, helper_text, head + "<|im_start|>assistant" + tail


def baseline_collate(processor, samples, latent_size, ids, assistant_id):
    texts = [baseline_texts(processor, s) for s in samples]
    helpers = [img for s in samples for img in s["helper_images"]]
    # Pass 1: user view -> video pixels and grids (visuals fitted again).
    user = encode_batch(processor, [t[0] for t in texts], [s["visual"] for s in samples])
    # Pass 2: assistant view -> helper-image pixels and grids.
    helper = encode_helper_images(processor, helpers)
    # Pass 3: the full conversation -> token ids (video and helper images processed once more).
    fitted_videos = [prepare_visual(s["visual"])[1] for s in samples]
    fitted_helpers = [prepare_visual(img)[1] for img in helpers]
    metadata = [{"fps": FRAME_FPS, "total_num_frames": v.shape[0], "frames_indices": list(range(v.shape[0]))}
                for v in fitted_videos]
    full = processor(text=[t[2] for t in texts], videos=fitted_videos, images=fitted_helpers, padding=True,
                     return_tensors="pt", cap_pixels_per_frame=True, video_metadata=metadata)
    # Step 3, per token: strip padding, collapse each latent block's pads to latent_size, re-pad.
    rows = []
    for i in range(full["input_ids"].shape[0]):
        row_ids, mask = full["input_ids"][i], full["attention_mask"][i]
        kept = [row_ids[j] for j in range(len(row_ids)) if mask[j] == 1]
        out, inside = [], False
        for tok in kept:
            if tok == ids.start:
                out.append(tok)
                out.extend([torch.tensor(ids.pad)] * latent_size)
                inside = True
            elif tok == ids.end:
                out.append(tok)
                inside = False
            elif not inside:
                out.append(tok)
        rows.append(out)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), ids.text_pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        for j, tok in enumerate(r):
            input_ids[i, j] = tok
            attention_mask[i, j] = 1
    # Step 4, per token: labels.
    labels = input_ids.clone()
    for i in range(labels.shape[0]):
        found = -1
        for j in range(labels.shape[1] - 1):
            if input_ids[i, j] == ids.im_start and input_ids[i, j + 1] == assistant_id:
                found = j + 1
                break
        for j in range(labels.shape[1]):
            if j <= found or found < 0 or input_ids[i, j] == ids.text_pad or input_ids[i, j] == ids.pad:
                labels[i, j] = IGNORE_INDEX
    # Step 5, per token: the image-out mask.
    image_out_mask = torch.zeros_like(input_ids)
    for i in range(input_ids.shape[0]):
        seen = False
        for j in range(input_ids.shape[1]):
            if input_ids[i, j] == ids.start:
                seen = True
            if seen and input_ids[i, j] == ids.pad:
                image_out_mask[i, j] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, image_out_mask=image_out_mask,
                pixel_values_videos=user["pixel_values_videos"], video_grid_thw=user["video_grid_thw"],
                second_per_grid_ts=user["second_per_grid_ts"], **helper)


def baseline_labels_and_masks(input_ids, ids, assistant_id):
    """Steps 4-5 alone, per token (for the label/mask-only comparison)."""
    labels = input_ids.clone()
    image_out_mask = torch.zeros_like(input_ids)
    for i in range(input_ids.shape[0]):
        found = -1
        for j in range(input_ids.shape[1] - 1):
            if input_ids[i, j] == ids.im_start and input_ids[i, j + 1] == assistant_id:
                found = j + 1
                break
        seen = False
        for j in range(input_ids.shape[1]):
            if j <= found or found < 0 or input_ids[i, j] == ids.text_pad or input_ids[i, j] == ids.pad:
                labels[i, j] = IGNORE_INDEX
            if input_ids[i, j] == ids.start:
                seen = True
            if seen and input_ids[i, j] == ids.pad:
                image_out_mask[i, j] = 1
    return labels, image_out_mask


# ---------------------------------------------------------------------------------------------


def median_time(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:  # first calls pay for lazy initialisation (torch ops, tokenizer caches)
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_samples(batch: int, frames: int, size: int) -> list[dict]:
    samples = []
    for i in range(batch):
        clip = moving_square_frames(frames, size, size, direction="right", seed=i)
        samples.append(dict(
            visual=clip, question=f"Sample {i}: where does the square go?\n\nA. Left\nB. Right\nC. Up\nD. Down",
            text_output=("<think>From <output_image> to <output_image> the square shifts right across the "
                         "frame.</think><answer>B</answer>"),
            helper_images=[clip[0].resize((size // 2, size // 2)), clip[-1].resize((size // 2, size // 2))]))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint with a processor (default: build the tiny one)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--latent_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from scripts.build_tiny_model import write_checkpoint

            model_dir = write_checkpoint(Path(tmp) / "tiny")
        processor = load_processor(model_dir)
    ids = add_latent_tokens(processor.tokenizer)
    assistant_id = assistant_token_id(processor.tokenizer)
    samples = make_samples(args.batch, args.frames, args.size)
    ours = DIFTCollator(processor, args.latent_size, ids)

    # Same batch from both (what the benchmark compares must be the same computation).
    a, b = ours(samples), baseline_collate(processor, samples, args.latent_size, ids, assistant_id)
    for key in ("input_ids", "attention_mask", "labels", "image_out_mask", "pixel_values_videos", "video_grid_thw",
                "second_per_grid_ts", "pixel_values_latent", "image_grid_thw_latent"):
        if not torch.equal(a[key], b[key]):
            raise SystemExit(f"ours and the baseline differ in {key}")
    tokens = a["input_ids"].shape
    log.info("batch %d x %d tokens (%d video tokens per sample), %d helper images; outputs identical",
             tokens[0], tokens[1], int(a["video_grid_thw"][0].prod()) // 4, a["image_grid_thw_latent"].shape[0])

    # Both were just run once above (the equality check): that was the warm-up.
    t_base = median_time(lambda: baseline_collate(processor, samples, args.latent_size, ids, assistant_id),
                         args.repeats, warmup=False)
    t_ours = median_time(lambda: ours(samples), args.repeats, warmup=False)

    input_ids = a["input_ids"]
    t_loop = median_time(lambda: baseline_labels_and_masks(input_ids, ids, assistant_id), 1, warmup=False)
    counts = torch.full((input_ids.shape[0],), 2)
    sources = [f"sample {i}" for i in range(input_ids.shape[0])]

    def vectorised():
        check_latent_blocks(input_ids, ids, args.latent_size, counts, sources)
        build_labels(input_ids, ids.im_start, assistant_id, (ids.text_pad, ids.pad))
        build_image_out_mask(input_ids, ids.pad, ids.start)

    t_vec = median_time(vectorised, 20)
    log.info("whole collator: baseline %.3f s, ours %.3f s per batch (median of %d)", t_base, t_ours, args.repeats)
    log.info("labels + image_out_mask alone: per-token loops %.3f s, vectorised %.5f s: %.0fx",
             t_loop, t_vec, t_loop / t_vec)
    print(f"collator_speedup={t_base / t_ours:.2f}")


if __name__ == "__main__":
    main()
