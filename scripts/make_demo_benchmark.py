"""Build a synthetic benchmark in the DSR format: the embedded default for evaluation runs.

    python scripts/make_demo_benchmark.py --out DIR [--per_type 2 --seed 0]
    python scripts/make_demo_benchmark.py --out DIR --formats parquet json jsonl --missing 1 --corrupt 1

Writes DIR/benchmark.parquet (fields videoID, question, options as a list, answer, type: the 13
DSR sub-task types, `per_type` questions each) and DIR/videos/<videoID>.mp4 (a square moving in a
known direction over a textured background, encoded with PyAV; two questions per video). With
`--formats json` / `jsonl` the same rows are also written as benchmark.json (a dict of records,
with the aliases `video` / `candidates` and options as a string holding a Python list) and
benchmark.jsonl (one record a line). `--missing N` leaves N videos unwritten, `--corrupt N` writes N
as garbage bytes: the evaluation must skip and count both. They are taken from the last videos whose
loss still leaves every sub-task a question with a readable video (so the evaluation table has no
"N/A"), then, if there are too few such videos (e.g. `--per_type 1`), simply from the last ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evaluation.metrics import SUBTASK_COLUMNS  # noqa: E402
from scripts.synthetic_media import moving_square_frames, write_mp4  # noqa: E402

log = logging.getLogger("make_demo_benchmark")
LETTERS = "ABCD"
MOTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SPEED_STEPS = {"slow": 2, "fast": 6}

# One question template per sub-task: (question, options, how the truth follows from the video).
QUESTION_TEMPLATES = {
    "abs_dis": ("Does the red square end up closer to the left or the right edge of the view?", "side"),
    "abs_dir": ("In which direction does the red square move, from the camera's point of view?", "motion"),
    "abs_ori": ("Which way does the red square face while it moves?", "motion"),
    "abs_spd": ("How fast does the red square move?", "speed"),
    "abs_spd_comp": ("Compared with the background, is the red square fast or slow?", "speed"),
    "abs_dir_pred": ("If the motion continues, where will the red square be next?", "motion"),
    "rel_dis": ("Relative to its start, which side is the red square on at the end?", "motion"),
    "rel_dir": ("Relative to the background, in which direction does the red square move?", "motion"),
    "rel_ori": ("Relative to the camera, which side of the red square leads its motion?", "motion"),
    "rel_spd": ("Relative to the camera, how fast does the red square move?", "speed"),
    "rel_spd_comp": ("Is the red square moving faster or slower than a walking pace?", "speed"),
    "rel_dir_pred": ("Which direction will the red square take next, relative to the camera?", "motion"),
    "non_temp": ("What colour is the moving square?", "colour"),
}
assert set(QUESTION_TEMPLATES) == set(SUBTASK_COLUMNS)


def _options_and_answer(kind: str, motion: str, speed: str, rng: random.Random,
                        letter: str) -> tuple[list[str], str]:
    """Four options with the truth at `letter` (the others shuffled)."""
    if kind == "motion":
        choices, truth = list(MOTIONS), motion
    elif kind == "side":
        choices = ["left edge", "right edge", "top edge", "bottom edge"]
        truth = {"left": "left edge", "right": "right edge", "up": "top edge", "down": "bottom edge"}[motion]
    elif kind == "speed":
        choices, truth = ["slow", "fast", "not moving", "first slow then fast"], speed
    else:
        choices, truth = ["red", "green", "blue", "yellow"], "red"
    others = [c for c in choices if c != truth]
    rng.shuffle(others)
    others.insert(LETTERS.index(letter), truth)
    return [f"{LETTERS[i]}. {c}" for i, c in enumerate(others)], letter


def build_rows(per_type: int, seed: int) -> tuple[list[dict], dict[str, dict]]:
    """Benchmark rows (type-major order) and the videos they use: {video_id: motion parameters}."""
    rng = random.Random(seed)
    n_questions = per_type * len(QUESTION_TEMPLATES)
    n_videos = max(1, math.ceil(n_questions / 2))
    videos = {f"synth_{k:04d}": {"direction": rng.choice(MOTIONS), "speed": rng.choice(sorted(SPEED_STEPS)),
                                 "seed": rng.randrange(1 << 16)} for k in range(n_videos)}
    video_ids = list(videos)
    rows = []
    for t, (type_key, (question, kind)) in enumerate(QUESTION_TEMPLATES.items()):
        for q in range(per_type):
            video_id = video_ids[len(rows) % n_videos]
            params = videos[video_id]
            # Answer letters cycle within each sub-task (and run on across sub-tasks), so no letter
            # wins by being frequent: a constant answer scores about chance.
            letter = LETTERS[(t * per_type + q) % len(LETTERS)]
            options, answer = _options_and_answer(kind, params["direction"], params["speed"], rng, letter)
            rows.append({"videoID": video_id, "question": question, "options": options, "answer": answer,
                         "type": type_key})
    return rows, videos


def choose_unreadable_videos(rows: list[dict], video_ids: list[str], count: int) -> list[str]:
    """`count` video ids to leave unreadable, last first, preferring those whose loss leaves every
    sub-task at least one question with a readable video."""
    uses = {video_id: Counter() for video_id in video_ids}
    for row in rows:
        uses[row["videoID"]][row["type"]] += 1
    readable = Counter(row["type"] for row in rows)  # per sub-task: questions whose video is readable
    chosen = []
    for video_id in reversed(video_ids):
        if len(chosen) < count and all(readable[t] > n for t, n in uses[video_id].items()):
            chosen.append(video_id)
            readable -= uses[video_id]
    # Too few such videos (each sub-task has a single question): sub-tasks must lose questions anyway.
    chosen += [v for v in reversed(video_ids) if v not in chosen][:count - len(chosen)]
    return chosen


def write_videos(video_dir: Path, videos: dict[str, dict], frames: int, fps: float, size: int,
                 missing_ids: set[str] = frozenset(), corrupt_ids: set[str] = frozenset()) -> None:
    video_dir.mkdir(parents=True, exist_ok=True)
    for video_id, params in videos.items():
        path = video_dir / f"{video_id}.mp4"
        path.unlink(missing_ok=True)
        if video_id in missing_ids:
            continue
        if video_id in corrupt_ids:
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 8)
            continue
        images = moving_square_frames(frames, size, size, params["direction"], SPEED_STEPS[params["speed"]],
                                      seed=params["seed"])
        write_mp4(path, images, fps)


def build_benchmark(out: str | Path, per_type: int = 2, seed: int = 0, frames: int = 8, fps: float = 1.0,
                    size: int = 112, formats: tuple[str, ...] = ("parquet",), missing: int = 0,
                    corrupt: int = 0) -> Path:
    """Write the benchmark file(s) and videos into `out`; returns the folder. Videos: `out/videos`."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, videos = build_rows(per_type, seed)
    if missing + corrupt > len(videos):
        raise ValueError(f"--missing + --corrupt ({missing + corrupt}) exceeds the {len(videos)} videos")
    unreadable = choose_unreadable_videos(rows, list(videos), missing + corrupt)
    write_videos(out / "videos", videos, frames, fps, size, set(unreadable[:missing]), set(unreadable[missing:]))
    for fmt in formats:
        if fmt == "parquet":
            pd.DataFrame(rows).to_parquet(out / "benchmark.parquet", index=False)
        elif fmt == "json":  # the aliases and the string-list option format
            records = {f"q{i}": {"video": r["videoID"], "question": r["question"],
                                 "candidates": repr(r["options"]), "answer": f" {r['answer'].lower()} ",
                                 "type": r["type"].upper()} for i, r in enumerate(rows)}
            (out / "benchmark.json").write_text(json.dumps(records, indent=1))
        elif fmt == "jsonl":
            (out / "benchmark.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            raise ValueError(f"unknown format {fmt!r} (parquet, json, jsonl)")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--per_type", type=int, default=2, help="questions per sub-task type (13 types)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--fps", type=float, default=1.0,
                        help="frame rate of the written videos (1: every frame survives the 1-fps sampling)")
    parser.add_argument("--size", type=int, default=112, help="video width and height in pixels")
    parser.add_argument("--formats", nargs="+", default=["parquet"], choices=["parquet", "json", "jsonl"])
    parser.add_argument("--missing", type=int, default=0, help="videos left unwritten (skipped by evaluation)")
    parser.add_argument("--corrupt", type=int, default=0, help="videos written as garbage (skipped by evaluation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_benchmark(args.out, args.per_type, args.seed, args.frames, args.fps, args.size,
                          tuple(args.formats), args.missing, args.corrupt)
    log.info("wrote %d questions (%s) and their videos to %s", args.per_type * len(QUESTION_TEMPLATES),
             ", ".join(f"benchmark.{f}" for f in args.formats), out)


if __name__ == "__main__":
    main()
