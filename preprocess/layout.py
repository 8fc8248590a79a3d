"""The engine's folder layout (see the package docstring) and its atomic file writes.

Every per-clip output is written to a temporary name in the same folder (a name starting with a
dot: `preprocess.runner` removes what a killed writer left) and renamed into place, so a killed
run leaves either the old file or the new one, never half of one. Append-only logs (completed
ids, failures, LLM replies) are written a whole line at a time and fsync'ed. Every text written
here passes through `preprocess.redact.scrub`: no part of the API key reaches a file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .redact import scrub

log = logging.getLogger(__name__)
CLIPS_DIR = "clips"
STATE_DIR = "state"
QA_DIR = "qa"
CAMERA_QA_JSONL = "camera_qa.jsonl"
OBJECT_QA_JSONL = "object_qa.jsonl"
QA_ALL_JSONL = "qa_all.jsonl"
DIFT_JSONL = "dift_data.jsonl"
RL_JSONL = "rl_data.jsonl"


def unchecked_name(name: str) -> str:
    """`dift_data.jsonl` -> `dift_data.unchecked.jsonl` (convert's output, check's input)."""
    stem, _, ext = name.rpartition(".")
    return f"{stem}.unchecked.{ext}"


@dataclass(frozen=True)
class ClipPaths:
    """Where one clip's files live under the output root."""

    root: Path  # the output root
    clip_id: str

    @property
    def dir(self) -> Path:
        return self.root / CLIPS_DIR / self.clip_id

    @property
    def clip_json(self) -> Path:
        return self.dir / "clip.json"

    @property
    def frames_dir(self) -> Path:
        return self.dir / "frames"

    @property
    def objects_json(self) -> Path:
        return self.dir / "objects.json"

    @property
    def masks_json(self) -> Path:
        return self.dir / "masks.json"

    def mask_dir(self, kind: str) -> Path:
        """`masks_dynamic/` or `masks_static/` (kind: 'dynamic' | 'static')."""
        if kind not in ("dynamic", "static"):
            raise ValueError(f"mask kind must be 'dynamic' or 'static', got {kind!r}")
        return self.dir / f"masks_{kind}"

    def mask_file(self, kind: str, number: int) -> Path:
        """The mask of frame `number` (`masks_dynamic/frame_0007.npy`)."""
        return self.mask_dir(kind) / f"{Path(frame_file_name(number)).stem}.npy"

    @property
    def masked_frames_dir(self) -> Path:
        return self.dir / "masked_frames"

    @property
    def camera_overlays_dir(self) -> Path:
        return self.dir / "masked_static_overlays"

    @property
    def dynamic_overlays_dir(self) -> Path:
        return self.dir / "masked_dynamic_overlays"

    def qa_json(self, kind: str) -> Path:
        """`camera_qa.json` or `object_qa.json` (kind: 'camera' | 'object')."""
        return self.dir / f"{kind}_qa.json"

    def rel(self, path: Path) -> str:
        """A path as stored in QA records: relative to the output root, with forward slashes."""
        return Path(path).relative_to(self.root).as_posix()


def frame_file_name(number: int) -> str:
    return f"frame_{number:04d}.jpg"


def frame_number(path: str | Path) -> int:
    """The number in `frame_0012.jpg`, `frame_0012.npy` or `frame_0012_mask.npy` (the original's two namings)."""
    stem = Path(path).stem.removesuffix("_mask")
    try:
        return int(stem.rsplit("_", 1)[-1])
    except ValueError:
        raise ValueError(f"not a frame file name: {path}") from None


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _remove_stale(path: Path) -> None:
    """Temporaries of `path` that a killed writer left (each path has one writer at a time)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _tmp_path(path: Path) -> Path:
    _remove_stale(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; on success it is fsync'ed and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _scrubbed(text: str, path) -> str:
    """`text` scrubbed of secrets; says so when something was removed (an accidental match of an
    innocent text with part of the key must not change the data silently)."""
    clean = scrub(text)
    if clean != text:
        log.warning("%s: text matching part of the API key was replaced by ***", path)
    return clean


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(_scrubbed(text, path), encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def write_jsonl_atomic(path: str | Path, records) -> int:
    """Write records one JSON object a line (temp + rename); returns the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(_scrubbed(json.dumps(rec, ensure_ascii=False), path) + "\n")
            n += 1
    return n


@contextmanager
def atomic_folder(path: str | Path):
    """Yield an empty temporary folder; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_line(path: str | Path, line: str) -> None:
    """Append one whole line and fsync, repairing a torn last line a kill may have left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _scrubbed(line, path)
    if "\n" in line:
        raise ValueError("append_line takes a single line")
    with open(path, "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":  # a torn line from a killed writer: drop it
                fh.seek(0)
                data = fh.read()
                fh.truncate(data.rfind(b"\n") + 1)
                fh.seek(0, os.SEEK_END)
        fh.write(line.encode("utf-8") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_complete_lines(path: str | Path) -> list[str]:
    """The newline-terminated lines of a file (a torn last line is ignored); [] if it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    data = raw.decode("utf-8", errors="replace")
    if "\ufffd" in data and "\ufffd".encode() not in raw:  # a file edited or damaged by something else
        log.warning("%s: bytes that are not UTF-8 replaced; lines holding them match no clip", path)
    lines = data.split("\n")
    return [ln for ln in lines[:-1] if ln.strip()]


# ---------------------------------------------------------------------------------------------
# Seeds


def clip_rng(seed: int, clip_id: str, purpose: str) -> random.Random:
    """A random generator owned by one clip and one purpose: the same (seed, clip, purpose) always
    gives the same draws, whatever the thread order or the other clips."""
    digest = hashlib.sha256(f"{seed}\x00{clip_id}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
