"""Reading SpatialVID: which clips exist and what their annotation files say.

Input root layout (SpatialVID's own):
    videos/<group>/<video_id>.mp4
    annotations/<group>/<video_id>/indexes.txt       lines "<seq> <video_frame_index>"
    annotations/<group>/<video_id>/instructions.json {"a->b": ["Pan Left", ...], ...}  (a, b: seq numbers)
    annotations/<group>/<video_id>/caption.json      only "SceneSummary" is used
    annotations/<group>/<video_id>/poses.npy, intrinsics.npy (not used: camera motion comes from
                                                      instructions.json, as in the original)
Bad content raises one-line errors naming file:line (or file and key).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SEGMENT_KEY = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*$")


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
    """(seq, video frame index) pairs in file order; `#` lines and lines without two fields are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: indexes.txt not found")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) != 2:
            continue
        try:
            seq, index = int(fields[0]), int(fields[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected two integers '<seq> <frame index>', got {line.strip()!r}") from None
        if index < 0:
            raise ValueError(f"{path}:{lineno}: negative frame index {index}")
        pairs.append((seq, index))
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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{'a->b': [moves]}}, got {type(data).__name__}")
    segments = []
    for key, moves in data.items():
        m = _SEGMENT_KEY.match(key)
        if not m:
            raise ValueError(f"{path}: segment key {key!r} is not 'a->b'")
        if isinstance(moves, str):
            moves = [moves]
        if not isinstance(moves, list) or not all(isinstance(x, str) for x in moves):
            raise ValueError(f"{path}: segment {key!r}: expected a list of move names")
        a, b = int(m.group(1)), int(m.group(2))
        if b <= a:
            raise ValueError(f"{path}: segment {key!r} does not go forward")
        segments.append(RawSegment(key.strip(), a, b, tuple(x.strip() for x in moves if x.strip())))
    return segments


def read_scene_summary(path: str | Path) -> str:
    """caption.json's SceneSummary ('' if the file or field is missing)."""
    path = Path(path)
    if not path.is_file():
        return ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    summary = data.get("SceneSummary", "") if isinstance(data, dict) else ""
    return summary.strip() if isinstance(summary, str) else ""


def decode_frames_at(video_path: str | Path, indices: list[int]) -> tuple[dict[int, np.ndarray], float]:
    """RGB frames at the given source indices (decoded in one forward pass with PyAV) and the
    source fps. Indices past the end of the stream are missing from the result."""
    import av

    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise ValueError(f"{video_path}: the video stream has no frame rate")
        last = max(wanted) if wanted else -1
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return frames, fps
