"""Build a small synthetic 4DRL data set: `rl_data.jsonl` with frames (and videos), for the CPU launcher
and the tests.

    python scripts/make_demo_rl_data.py --out DIR [--num_samples 8 --seed 0 --num_frames 4 --size 112 --videos 0]

Each record asks in which direction a coloured square moves (four options, the correct letter at a
seeded position), in the layout `fourdrl.data` reads: `id`, `Question`, `A`-`D`, `Correct` and
`frame_paths` (relative to DIR), or, for the first `--videos` records, `video_path` (an mp4 at 1 frame
per second, the original's other layout).

Writes DIR/rl_data.jsonl, DIR/frames/<id>/frame_%04d.jpg, DIR/videos/<id>.mp4.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.synthetic_media import moving_square_frames, write_mp4  # noqa: E402

MOTIONS = ("left", "right", "up", "down")
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
LETTERS = "ABCD"


def make_record(index: int, rng: random.Random, out: Path, num_frames: int, size: int, as_video: bool) -> dict:
    sample_id = f"rl_{index:05d}"
    direction, color = rng.choice(MOTIONS), rng.choice(sorted(COLORS))
    frames = moving_square_frames(num_frames, size, size, direction=direction, step=6, size=20, color=COLORS[color],
                                  seed=rng.randrange(1 << 30))
    options = list(MOTIONS)
    rng.shuffle(options)
    record = {"id": sample_id, "Question": f"In which direction does the {color} square move during the video?"}
    record.update({LETTERS[i]: option.capitalize() for i, option in enumerate(options)})
    record["Correct"] = LETTERS[options.index(direction)]
    if as_video:
        video = out / "videos" / f"{sample_id}.mp4"
        write_mp4(video, frames, fps=1.0)
        record["video_path"] = video.relative_to(out).as_posix()
    else:
        folder = out / "frames" / sample_id
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames):
            frame.save(folder / f"frame_{i:04d}.jpg", quality=95)
        record["frame_paths"] = [f"frames/{sample_id}/frame_{i:04d}.jpg" for i in range(num_frames)]
    return record


def write_demo_rl_data(out: str | os.PathLike, num_samples: int = 8, seed: int = 0, num_frames: int = 4,
                       size: int = 112, videos: int = 0) -> Path:
    """Write the data set into `out`; returns the JSONL path (written atomically)."""
    if num_samples < 1 or num_frames < 2 or size < 56 or not 0 <= videos <= num_samples:
        raise ValueError("need num_samples >= 1, num_frames >= 2, size >= 56 and 0 <= videos <= num_samples")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = [make_record(i, rng, out, num_frames, size, as_video=i < videos) for i in range(num_samples)]
    jsonl = out / "rl_data.jsonl"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".rl_data.", suffix=".jsonl")
    with os.fdopen(fd, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, jsonl)
    return jsonl


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--size", type=int, default=112, help="frame side in pixels")
    parser.add_argument("--videos", type=int, default=0, help="how many records point to an mp4 (video_path)")
    args = parser.parse_args(argv)
    path = write_demo_rl_data(args.out, args.num_samples, args.seed, args.num_frames, args.size, args.videos)
    print(f"wrote {args.num_samples} RL records to {path}")


if __name__ == "__main__":
    main()
