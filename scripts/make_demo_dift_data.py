"""Build the embedded default DIFT data: a small synthetic `dift_data.jsonl` with frames and helper images.

    python scripts/make_demo_dift_data.py --out DIR [--num_samples 8 --seed 0 --num_frames 4 --size 112]

Each sample is a clip of a coloured square moving in a known direction over a textured background.
The question asks for the direction (four options, the correct letter at a seeded position); the
chain of thought holds one `<output_image>` per helper image; the helper images are the first and
last frames with everything but the square dimmed (like the original's masked overlays).

Writes (paths in the JSONL are relative to DIR, as `dift.data.DIFTJsonlDataset` resolves them):
    DIR/dift_data.jsonl
    DIR/frames/<id>/frame_%04d.jpg
    DIR/helpers/<id>_<k>.jpg
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.core.conversation import question_with_options  # noqa: E402
from dift.core.tokens import OUTPUT_IMAGE_PLACEHOLDER  # noqa: E402
from scripts.synthetic_media import moving_square_frames, square_mask  # noqa: E402

log = logging.getLogger("make_demo_dift_data")

MOTIONS = ("left", "right", "up", "down")
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
LETTERS = "ABCD"
STEP = 6
SQUARE = 20


def highlight(frame: Image.Image, mask: np.ndarray) -> Image.Image:
    """The frame with everything outside `mask` dimmed to a quarter: the object as a helper image."""
    pixels = np.asarray(frame).astype(np.float32)
    pixels[~mask] *= 0.25
    return Image.fromarray(pixels.astype(np.uint8))


def make_record(index: int, rng: random.Random, out: Path, num_frames: int, size: int) -> dict:
    sample_id = f"demo_{index:05d}"
    direction = rng.choice(MOTIONS)
    color_name = rng.choice(sorted(COLORS))
    frames = moving_square_frames(num_frames, size, size, direction=direction, step=STEP, size=SQUARE,
                                  color=COLORS[color_name], seed=rng.randrange(1 << 30))
    frame_dir = out / "frames" / sample_id
    frame_dir.mkdir(parents=True, exist_ok=True)
    frame_paths = []
    for i, frame in enumerate(frames):
        frame.save(frame_dir / f"frame_{i:04d}.jpg", quality=95)
        frame_paths.append(f"frames/{sample_id}/frame_{i:04d}.jpg")

    helper_paths = []
    (out / "helpers").mkdir(parents=True, exist_ok=True)
    for k, i in enumerate((0, num_frames - 1)):
        mask = square_mask(i, num_frames, size, size, direction=direction, step=STEP, size=SQUARE)
        highlight(frames[i], mask).save(out / "helpers" / f"{sample_id}_{k}.jpg", quality=95)
        helper_paths.append(f"helpers/{sample_id}_{k}.jpg")

    options = list(MOTIONS)
    rng.shuffle(options)
    letter = LETTERS[options.index(direction)]
    question = question_with_options(f"In which direction does the {color_name} square move during the video?",
                                      [f"{LETTERS[i]}. {o.capitalize()}" for i, o in enumerate(options)])
    cot = (f"<think>I locate the {color_name} square in the first and last seconds of the clip and picture it: "
           f"from {OUTPUT_IMAGE_PLACEHOLDER} to {OUTPUT_IMAGE_PLACEHOLDER} it shifts {direction} against the "
           f"still background, so it moves {direction}.</think><answer>{letter}</answer>")
    return dict(id=sample_id, image_input=frame_paths, image_output=helper_paths, text_input=question,
                text_output=cot)


def write_demo_data(out: str | os.PathLike, num_samples: int = 8, seed: int = 0, num_frames: int = 4,
                    size: int = 112) -> Path:
    """Write the demo data set into `out`; returns the JSONL path (written atomically)."""
    if num_samples < 1 or num_frames < 2 or size < 56:
        raise ValueError("need num_samples >= 1, num_frames >= 2 and size >= 56")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = [make_record(i, rng, out, num_frames, size)
               for i in tqdm(range(num_samples), desc="demo samples", disable=num_samples < 50)]
    jsonl = out / "dift_data.jsonl"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".dift_data.", suffix=".jsonl")
    with os.fdopen(fd, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, jsonl)
    return jsonl


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_frames", type=int, default=4, help="frames per clip (the original's have 10 to 50)")
    parser.add_argument("--size", type=int, default=112, help="frame side in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = write_demo_data(args.out, args.num_samples, args.seed, args.num_frames, args.size)
    log.info("wrote %d samples to %s", args.num_samples, path)


if __name__ == "__main__":
    main()
