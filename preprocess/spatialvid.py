"""Reading SpatialVID: which clips exist and what their annotation files say.

Input root layout (SpatialVID's own):
    videos/<group>/<video_id>.mp4
    annotations/<group>/<video_id>/indexes.txt       lines "<seq> <video_frame_index>"
    annotations/<group>/<video_id>/instructions.json {"a->b": ["Pan Left", ...], ...}  (a, b: seq numbers)
    annotations/<group>/<video_id>/caption.json      only "SceneSummary" is used
    annotations/<group>/<video_id>/poses.npy, intrinsics.npy (not used: camera motion comes from
                                                      instructions.json, as in the original)
Bad content raises `RecordError`, one line naming file:line (or file and key); the frames step
records it as the clip's failure reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .records import RecordError, read_json, read_text

log = logging.getLogger(__name__)
_SEGMENT_KEY = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*$", re.ASCII)
_INTEGER = re.compile(r"^[+-]?\d+$", re.ASCII)  # int() alone would also take "1_000" and non-ASCII digits


@dataclass(frozen=True)
class SourceClip:
    group: str
    video_id: str
    video_path: Path
    annotation_dir: Path

    @property
    def indexes_path(self) -> Path:
        return self.annotation_dir / "indexes.txt"

    @property
    def instructions_path(self) -> Path:
        return self.annotation_dir / "instructions.json"

    @property
    def caption_path(self) -> Path:
        return self.annotation_dir / "caption.json"


def list_source_clips(input_root: str | Path) -> list[SourceClip]:
    """Every clip: group folders sorted, then `*.mp4` sorted (the original's order)."""
    root = Path(input_root)
    videos = root / "videos"
    if not videos.is_dir():
        raise FileNotFoundError(f"{videos}: no videos/ folder (expected SpatialVID's videos/<group>/<id>.mp4)")
    clips = []
    for group_dir in sorted(p for p in videos.iterdir() if p.is_dir()):
        for mp4 in sorted(group_dir.glob("*.mp4")):
            clips.append(SourceClip(group_dir.name, mp4.stem, mp4, root / "annotations" / group_dir.name / mp4.stem))
    return clips


def read_indexes(path: str | Path) -> list[tuple[int, int]]:
    """(seq, video frame index) pairs in file order. `#` lines and lines without exactly two fields
    are ignored, as in the original (with a warning naming the first such line); two integers are
    required otherwise, sequence numbers may not repeat and frame indices may not be negative."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: indexes.txt not found")
    pairs: list[tuple[int, int]] = []
    first_line_of_seq: dict[int, int] = {}
    ignored: list[int] = []
    # lines end at "\n" only (a CRLF file loses its "\r" with the white space): splitlines() would
    # also break inside a comment at "\r", "\x1c" or "\u2028"
    for lineno, line in enumerate(read_text(path, "indexes.txt").split("\n"), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            ignored.append(lineno)
            continue
        if not all(_INTEGER.match(f) for f in fields):
            raise RecordError(f"{path}:{lineno}: expected two integers '<seq> <frame index>', got {line.strip()[:60]!r}")
        seq, index = int(fields[0]), int(fields[1])
        if index < 0:
            raise RecordError(f"{path}:{lineno}: negative frame index {index}")
        if seq in first_line_of_seq:
            raise RecordError(f"{path}:{lineno}: sequence number {seq} repeats line {first_line_of_seq[seq]}")
        first_line_of_seq[seq] = lineno
        pairs.append((seq, index))
    if ignored:
        log.warning("%s:%d: %d line(s) without exactly two fields ignored", path, ignored[0], len(ignored))
    return pairs


@dataclass(frozen=True)
class RawSegment:
    key: str  # "a->b" as written
    start_seq: int
    end_seq: int
    moves: tuple[str, ...]  # as written (normalised later by labels.normalise_camera_moves)


def read_instructions(path: str | Path) -> list[RawSegment]:
    """Camera segments in file order; [] if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    data = read_json(path, "instructions.json")
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected an object {{'a->b': [moves]}}, got {type(data).__name__}")
    segments = []
    for key, moves in data.items():
        m = _SEGMENT_KEY.match(key)
        if not m:
            raise RecordError(f"{path}: segment key {key[:40]!r} is not 'a->b'")
        if isinstance(moves, str):
            moves = [moves]
        if not isinstance(moves, list) or not all(isinstance(x, str) for x in moves):
            raise RecordError(f"{path}: segment {key!r}: expected a list of move names")
        a, b = int(m.group(1)), int(m.group(2))
        if b <= a:
            raise RecordError(f"{path}: segment {key!r} does not go forward")
        segments.append(RawSegment(key.strip(), a, b, tuple(x.strip() for x in moves if x.strip())))
    return segments


def read_scene_summary(path: str | Path) -> str:
    """caption.json's SceneSummary ('' if the file or the field is missing; an error if it is not text)."""
    path = Path(path)
    if not path.is_file():
        return ""
    data = read_json(path, "caption.json")
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
    summary = data.get("SceneSummary", "")
    if summary is None:
        return ""
    if not isinstance(summary, str):
        raise RecordError(f"{path}: field SceneSummary: expected a string, got {type(summary).__name__}")
    return summary.strip()


def decode_frames_at(video_path: str | Path, indices: list[int]) -> tuple[dict[int, np.ndarray], float]:
    """RGB frames at the given source indices (decoded in one forward pass with PyAV) and the
    source fps. Indices past the end of the stream are missing from the result; a file that is not
    a decodable video is a RecordError naming it."""
    import av

    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(video_path)) as container:
            if not container.streams.video:
                raise RecordError(f"{video_path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            if fps <= 0:
                raise RecordError(f"{video_path}: the video stream has no frame rate")
            last = max(wanted) if wanted else -1
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except av.error.FFmpegError as err:
        raise RecordError(f"{video_path}: not a decodable video ({getattr(err, 'strerror', None) or err})") from None
    return frames, fps
