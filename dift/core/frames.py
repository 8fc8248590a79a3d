"""Getting pixels out of videos and image files: the frame-sampling rule, decoding, the on-disk frame
cache, the sizing rules, and an ordered thread-pool prefetcher that prepares the frames of upcoming
items while the model runs. Training, evaluation, RL and inference all take their frames from here.

Rules (spec evaluation.md "Frames", model_and_dift.md section 2):
- 1 fps: count = max(1, floor(duration_s * fps)); frame i at source index floor(i * source_fps / fps),
  clamped to the last frame, duplicates dropped.
- At most `MAX_FRAMES` (50) reach the model: longer lists are sampled uniformly (linspace, truncated).
- Frames and helper images whose area exceeds 256*28*28 are downscaled (LANCZOS, aspect kept, sides
  floored to multiples of 28, at least 28); qwen-vl-utils then fits them to the model's grid.
- Video frames are given to the processor as one video at `FRAME_FPS` (second_per_grid_ts 2.0),
  in training, evaluation, RL and inference alike.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

FRAME_FPS = 1.0  # frames per second given to the model, everywhere
MAX_FRAMES = 50  # frames per video that reach the model
MAX_IMAGE_PIXELS = 256 * 28 * 28  # 200,704: larger frames / helper images are downscaled on load
PIXEL_FACTOR = 28  # patch 14 x spatial merge 2
JPEG_QUALITY = 95
FRAME_GLOB = "frame_*.jpg"


class VideoDecodeError(RuntimeError):
    """A video could not be decoded by any backend."""


# ---------------------------------------------------------------------------------------------
# The sampling rule


def one_fps_indices(num_frames: int, source_fps: float, fps: float = FRAME_FPS) -> list[int]:
    """Source frame indices sampled at `fps` (the original's decord/OpenCV rule)."""
    if num_frames <= 0:
        return []
    source_fps = source_fps if source_fps and source_fps > 0 else 30.0  # OpenCV's assumption
    count = max(1, math.floor(num_frames / source_fps * fps))
    indices = (min(math.floor(i * source_fps / fps), num_frames - 1) for i in range(count))
    return list(dict.fromkeys(indices))  # drop duplicates, keep order


def uniform_subsample(items: Sequence, max_count: int = MAX_FRAMES) -> list:
    """At most `max_count` items at uniform linspace positions (truncated to integers)."""
    if len(items) <= max_count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, max_count)]


# ---------------------------------------------------------------------------------------------
# Sizing


def cap_image_area(image: Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Downscale an image whose area exceeds `max_pixels` (LANCZOS, aspect kept, sides floored to
    multiples of 28, at least 28). Smaller images are returned untouched."""
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    new_w = max(PIXEL_FACTOR, int(w * scale) // PIXEL_FACTOR * PIXEL_FACTOR)
    new_h = max(PIXEL_FACTOR, int(h * scale) // PIXEL_FACTOR * PIXEL_FACTOR)
    return image.resize((new_w, new_h), Image.Resampling.LANCZOS)


def load_image(path: str | os.PathLike | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB image, area-capped; a missing or unreadable file raises with its path."""
    if isinstance(path, Image.Image):
        return cap_image_area(path.convert("RGB"), max_pixels)
    try:
        with Image.open(path) as img:
            return cap_image_area(img.convert("RGB"), max_pixels)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except OSError as err:
        raise OSError(f"cannot read image {path}: {err}") from None


def load_images(paths: Sequence, max_pixels: int = MAX_IMAGE_PIXELS, workers: int = 4) -> list[Image.Image]:
    if len(paths) <= 2 or workers <= 1:
        return [load_image(p, max_pixels) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: load_image(p, max_pixels), paths))


def fit_video_frames(frames: Sequence[Image.Image]):
    """qwen-vl-utils' fit of a frame list to the model grid: a (T, 3, H, W) uint8 tensor, T even."""
    from qwen_vl_utils import fetch_video

    return fetch_video({"video": list(frames)})


def fit_image(image: Image.Image) -> Image.Image:
    """qwen-vl-utils' fit of one image to the model grid (sides multiples of 28)."""
    from qwen_vl_utils import fetch_image

    return fetch_image({"image": image})


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode_pyav(path: Path, fps: float) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        source_fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        num_frames = stream.frames
        if not num_frames:  # container without a frame count: count packets (no decoding)
            num_frames = sum(1 for p in container.demux(stream) if p.size)
            container.seek(0)
        wanted = set(one_fps_indices(num_frames, source_fps, fps))
        last = max(wanted) if wanted else -1
        frames = []
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if i >= last:
                break
    return frames


def _decode_opencv(path: Path, fps: float) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoDecodeError(f"OpenCV cannot open {path}")
        num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        source_fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        frames = []
        for idx in one_fps_indices(num_frames, source_fps, fps):
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, bgr = cap.read()
            if ok:  # unreadable frames are skipped, as the original does
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return frames


def _decode_decord(path: Path, fps: float) -> list[np.ndarray]:
    import decord  # optional

    reader = decord.VideoReader(str(path))
    indices = one_fps_indices(len(reader), reader.get_avg_fps(), fps)
    return list(reader.get_batch(indices).asnumpy()) if indices else []


def _backends() -> list:
    backends = [_decode_pyav, _decode_opencv]
    try:
        import decord  # noqa: F401

        backends.append(_decode_decord)
    except ImportError:
        pass
    return backends


def decode_video_frames(path: str | os.PathLike, fps: float = FRAME_FPS) -> list[np.ndarray]:
    """RGB frames sampled at `fps` (PyAV, then OpenCV, then decord if installed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    errors = []
    for backend in _backends():
        try:
            frames = backend(path, fps)
        except Exception as err:  # a broken container: try the next backend
            errors.append(f"{backend.__name__.removeprefix('_decode_')}: {err}")
            continue
        if frames:
            return frames
        errors.append(f"{backend.__name__.removeprefix('_decode_')}: no frames")
    raise VideoDecodeError(f"cannot decode {path} ({'; '.join(errors)})")


def write_frames(frames: Sequence[np.ndarray], out_dir: str | os.PathLike, start: int = 0,
                 replace: bool = True) -> list[Path]:
    """Write frames as frame_%04d.jpg into `out_dir` atomically (a temp folder renamed into place).

    `replace=False` keeps a non-empty `out_dir` that another writer put in place meanwhile (the
    frame cache: two processes extracting the same video produce the same files) instead of
    deleting it under a reader's feet.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"frame_{i + start:04d}.jpg", quality=JPEG_QUALITY)
        if out_dir.exists():
            if not replace and any(out_dir.glob(FRAME_GLOB)):
                shutil.rmtree(tmp)
                return sorted(out_dir.glob(FRAME_GLOB))
            shutil.rmtree(out_dir)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another writer renamed its folder into place first
            if replace or not any(out_dir.glob(FRAME_GLOB)):
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out_dir.glob(FRAME_GLOB))


def list_frame_files(image_dir: str | os.PathLike) -> list[Path]:
    """The sorted frame_*.jpg files of a folder; an error if there are none."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"frame folder not found: {image_dir}")
    files = sorted(image_dir.glob(FRAME_GLOB))
    if not files:
        raise FileNotFoundError(f"no {FRAME_GLOB} files in {image_dir}")
    return files


# ---------------------------------------------------------------------------------------------
# The frame cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("FOURDTHINKER_FRAME_CACHE", Path(tempfile.gettempdir()) / "fourdthinker_frames"))


class FrameCache:
    """Frames extracted once per (video path, size, mtime, fps) under `root/<key>/frame_%04d.jpg`.

    Frames always go through JPEG (as the original's extraction did), so the first run and every
    cached run feed the model identical pixels. A second run does not decode again. Safe to share
    between threads (a video is decoded once even if several threads ask for it at the same time)
    and between processes (folders appear by atomic rename; a finished one is never replaced).
    `decoded` / `hits` count decodes and cache hits of this object.
    """

    def __init__(self, root: str | os.PathLike | None = None, fps: float = FRAME_FPS):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.fps = fps
        self.decoded = 0
        self.hits = 0
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def key(self, video_path: str | os.PathLike) -> str:
        path = Path(video_path).resolve()
        st = path.stat()
        raw = f"{path}|{st.st_size}|{st.st_mtime_ns}|{self.fps}"
        return f"{path.stem[:40]}-{hashlib.sha1(raw.encode()).hexdigest()[:16]}"

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def frame_paths(self, video_path: str | os.PathLike) -> list[Path]:
        """Cached frame files of a video, extracting them first if needed."""
        if not Path(video_path).is_file():
            raise FileNotFoundError(f"video not found: {video_path}")
        key = self.key(video_path)
        folder = self.root / key
        with self._key_lock(key):
            files = sorted(folder.glob(FRAME_GLOB)) if folder.is_dir() else []
            if files:
                with self._lock:
                    self.hits += 1
                return files
            frames = decode_video_frames(video_path, self.fps)
            with self._lock:
                self.decoded += 1
            return write_frames(frames, folder, replace=False)


def load_video_frames(video_path: str | os.PathLike, cache: FrameCache | None = None,
                      max_frames: int = MAX_FRAMES, max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """The frames the model sees for a video: 1 fps, cached on disk, at most `max_frames`, area-capped."""
    cache = cache or FrameCache()
    return load_images(uniform_subsample(cache.frame_paths(video_path), max_frames), max_pixels)


def load_frame_folder(image_dir: str | os.PathLike, max_frames: int = MAX_FRAMES,
                      max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """The frames the model sees for a folder of frame_*.jpg (already at 1 fps)."""
    return load_images(uniform_subsample(list_frame_files(image_dir), max_frames), max_pixels)


# ---------------------------------------------------------------------------------------------
# Prefetching: prepare the frames of upcoming items while the model runs


@dataclass
class Prefetched:
    """One item with what `fn(item)` returned, or the exception it raised."""

    item: object
    value: object = None
    error: BaseException | None = None


def prefetch_ordered(fn: Callable, items: Iterable, num_workers: int = 4,
                     max_ahead: int | None = None) -> Iterator[Prefetched]:
    """Run `fn` over `items` in a thread pool, at most `max_ahead` items ahead of the consumer,
    and yield the results in input order (never in completion order, so what a consumer does
    with item i cannot depend on thread timing). An exception of `fn` is yielded, not raised.

    Decoding (PyAV, OpenCV) and JPEG reading release the GIL, so threads overlap with the model.
    """
    max_ahead = max_ahead or 2 * max(1, num_workers)
    items = iter(items)
    if num_workers <= 0:  # inline: same order, no threads
        for item in items:
            try:
                yield Prefetched(item, fn(item))
            except Exception as err:  # handed to the consumer, which decides (skip, count)
                yield Prefetched(item, error=err)
        return
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="prefetch")
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= max_ahead:
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())
    finally:  # the consumer stopped early: drop the work not started yet
        pool.shutdown(wait=False, cancel_futures=True)


def _collect(item, future) -> Prefetched:
    try:
        return Prefetched(item, future.result())
    except Exception as err:
        return Prefetched(item, error=err)
