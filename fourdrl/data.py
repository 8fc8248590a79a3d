"""The 4DRL data: reading RL JSONL records into GRPO prompts, and the frames a rollout sees
(spec fourdrl.md sections 1 and 2).

One JSON object a line (several files may be given, joined with `:`): `Question`; option texts
`A`-`D` (empty or missing ones omitted); `Correct` (the letter); the visual source, `frame_paths`
(frame images, e.g. the data engine's `rl_data.jsonl`) or else `video_path` (a video, decoded at
1 fps into `dift.core.frames`' frame cache when the data is read). Relative paths are resolved
against the JSONL's own folder; other fields are ignored (an `id` names the record in logs).

Every record is validated when the data is read (JSON, fields, the answer among the options, every
frame file present or the video decodable). A bad record stops with `file:line: what is wrong`, or,
with `skip_bad_records`, is counted and reported in one summary.

Each record becomes one row of a `datasets.Dataset` (what TRL's GRPOTrainer takes):
- `prompt`: the user turn in TRL's conversational form, `[{"role": "user", "content": [{"type":
  "video", "video": [frame paths]}, {"type": "text", "text": question with options}]}]`, at most
  `max_frames` frames (uniform subsample); the output-format suffix and chat template are added at
  rollout time by `dift.core.conversation`, the one prompt format of every stage;
- `solution`: the correct letter (the accuracy reward's ground truth); `source`: `file:line`.

At rollout time `load_rl_frames` reads the frames and shrinks each so its longer side is at most
`max_side` pixels (bilinear, never upscaled), the original's RL frame rule (16 frames, 448 px).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from PIL import Image
from tqdm.auto import tqdm

from dift.core.conversation import question_with_options
from dift.core.extraction import normalize_gt
from dift.core.frames import FrameCache, VideoDecodeError, load_images, uniform_subsample

log = logging.getLogger(__name__)

OPTION_LETTERS = "ABCD"  # the option fields an RL record may have (no E/F, as the original)
RL_MAX_FRAMES = 16  # frames per rollout prompt (uniform subsample)
RL_MAX_FRAME_SIDE = 448  # longer side of a rollout frame, in pixels (448^2 = 256 * 28 * 28)
MAX_REPORTED_BAD_RECORDS = 20


class RLDataError(ValueError):
    """An RL record is unusable; the message starts with file:line."""


class _BadRecord(Exception):
    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


@dataclass
class RLRecord:
    """One usable RL record: what the prompt and the reward need."""

    source: str  # file:line
    question: str  # question with its options, one per line (no output-format suffix)
    solution: str  # the correct letter
    frames: list[str]  # frame image paths (absolute), at most max_frames

    def as_row(self) -> dict:
        content = [{"type": "video", "video": self.frames}, {"type": "text", "text": self.question}]
        return {"prompt": [{"role": "user", "content": content}], "solution": self.solution, "source": self.source}


# ---------------------------------------------------------------------------------------------
# Records


def split_data_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """`a.jsonl:b.jsonl` (the original's way of giving several files), or a list of paths."""
    if isinstance(paths, os.PathLike):
        paths = os.fspath(paths)
    items = paths.split(":") if isinstance(paths, str) else [str(p) for p in paths]
    files = [Path(p) for p in items if str(p).strip()]
    if not files:
        raise FileNotFoundError("no RL data file given")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"RL data file not found: {f}")
    return files


def _string_field(record: dict, name: str, required: bool = True) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise _BadRecord("missing field", f"missing field {name!r}")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _BadRecord("bad field", f"field {name!r} must be a string, got {type(value).__name__}")
    return str(value).strip()


def _frame_paths(record: dict, folder: Path, cache: FrameCache, max_frames: int) -> list[str]:
    if record.get("frame_paths") is not None:
        paths = record["frame_paths"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
            raise _BadRecord("bad field", "field 'frame_paths' must be a non-empty list of paths")
        resolved = [p if p.is_absolute() else folder / p for p in map(Path, paths)]
        for p in resolved:
            if not p.is_file():
                raise _BadRecord("missing frame", f"frame_paths: file not found: {p}")
    elif record.get("video_path") is not None:
        video = record["video_path"]
        if not isinstance(video, str) or not video.strip():
            raise _BadRecord("bad field", "field 'video_path' must be a path")
        path = Path(video) if Path(video).is_absolute() else folder / video
        try:
            resolved = cache.frame_paths(path)
        except FileNotFoundError:
            raise _BadRecord("missing video", f"video_path: file not found: {path}") from None
        except (VideoDecodeError, OSError) as err:  # every decoding backend failed, or the cache is unwritable
            raise _BadRecord("bad video", f"video_path: {err}") from None
    else:
        raise _BadRecord("missing field", "missing field 'frame_paths' or 'video_path'")
    return [str(p.resolve()) for p in uniform_subsample(resolved, max_frames)]


def parse_record(record, source: str, folder: Path, cache: FrameCache, max_frames: int) -> RLRecord:
    """An `RLRecord` from one JSON value, or `_BadRecord` saying which field is wrong."""
    if not isinstance(record, dict):
        raise _BadRecord("not JSON", f"a JSON {type(record).__name__}, not an object")
    question = _string_field(record, "Question")
    if not question:
        raise _BadRecord("bad field", "field 'Question' is empty")
    options = {letter: _string_field(record, letter, required=False) for letter in OPTION_LETTERS}
    present = [letter for letter in OPTION_LETTERS if options[letter]]
    solution = normalize_gt(_string_field(record, "Correct"))
    if not solution:
        raise _BadRecord("bad field", "field 'Correct' is empty")
    if solution not in present:
        raise _BadRecord("bad field", f"field 'Correct' is {solution!r}, not one of the options {', '.join(present) or '(none)'}")
    text = question_with_options(question, [f"{letter}. {options[letter]}" for letter in present])
    return RLRecord(source=source, question=text, solution=solution,
                    frames=_frame_paths(record, folder, cache, max_frames))


def read_rl_records(paths, skip_bad_records: bool = False, max_frames: int = RL_MAX_FRAMES,
                    cache: FrameCache | None = None, progress: bool = True,
                    max_skip_fraction: float = 1.0) -> list[RLRecord]:
    """Every usable record of the RL JSONL file(s), in file order. With `skip_bad_records`, skipping
    more than `max_skip_fraction` of the records (default: all of them) is an `RLDataError`."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    cache = cache or FrameCache()
    records: list[RLRecord] = []
    skipped: Counter[str] = Counter()
    bad: list[str] = []
    for path in split_data_paths(paths):
        folder = path.resolve().parent
        with open(path, "rb") as fh:
            for line_number, data in enumerate(tqdm(fh, desc=f"reading {path.name}", unit=" records",
                                                    disable=not progress, leave=False), start=1):
                if not data.strip():
                    continue
                source = f"{path}:{line_number}"
                try:
                    try:
                        raw = json.loads(data.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise _BadRecord("not UTF-8", "not UTF-8 text") from None
                    except json.JSONDecodeError as err:
                        raise _BadRecord("not JSON", f"not valid JSON ({err.msg})") from None
                    records.append(parse_record(raw, source, folder, cache, max_frames))
                except _BadRecord as err:
                    message = f"{source}: {err}"
                    if not skip_bad_records:
                        raise RLDataError(message + " (pass --skip_bad_records to skip such records)") from None
                    skipped[err.category] += 1
                    if len(bad) < MAX_REPORTED_BAD_RECORDS:
                        bad.append(message)
    if skipped:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        log.warning("RL data: skipped %d bad record(s) of %d (%s); first: %s", sum(skipped.values()),
                    sum(skipped.values()) + len(records), kinds, bad[0])
    if not records:
        raise RLDataError(f"{paths}: no usable RL records")
    total = len(records) + sum(skipped.values())
    if sum(skipped.values()) > max_skip_fraction * total:
        raise RLDataError(f"{paths}: {sum(skipped.values())} of {total} records skipped, more than "
                          f"--max_skip_fraction {max_skip_fraction} (first: {bad[0]})")
    log.info("RL data: %d records (%d from video files decoded now, %d from the frame cache)", len(records),
             cache.decoded, cache.hits)
    return records


def build_rl_dataset(records: Sequence[RLRecord]) -> Dataset:
    """The GRPO dataset: one row per record (`prompt`, `solution`, `source`)."""
    return Dataset.from_list([r.as_row() for r in records])


# ---------------------------------------------------------------------------------------------
# Prompts and frames at rollout time


def prompt_frames_and_question(prompt: list[dict]) -> tuple[list[str], str]:
    """The frame paths and question text of a `prompt` built by `RLRecord.as_row`."""
    frames, texts = None, []
    for message in prompt:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part.get("type") == "video":
                frames = list(part["video"])
            elif part.get("type") == "text":
                texts.append(part["text"])
    if not frames or not texts:
        raise ValueError("an RL prompt needs a video item and a text item (build it with fourdrl.data.RLRecord)")
    return frames, "\n".join(texts)


def cap_longer_side(image: Image.Image, max_side: int = RL_MAX_FRAME_SIDE) -> Image.Image:
    """Shrink `image` so its longer side is at most `max_side` (bilinear, aspect kept, never upscaled)."""
    w, h = image.size
    if max(w, h) <= max_side:
        return image
    longest = max(w, h)  # integer arithmetic: 1280x720 -> 448x252 exactly (float scaling floors to 251)
    return image.resize((max(1, w * max_side // longest), max(1, h * max_side // longest)), Image.Resampling.BILINEAR)


def load_rl_frames(paths: Sequence[str], max_side: int = RL_MAX_FRAME_SIDE) -> list[Image.Image]:
    """The frames of one rollout prompt, as read from disk with their longer side capped (the area cap
    of the other stages would resize first and differently, so it is lifted here)."""
    return [cap_longer_side(frame, max_side) for frame in load_images(list(paths), max_pixels=sys.maxsize)]
