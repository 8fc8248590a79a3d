"""Getting pixels out of videos and image files: the frame-sampling rule, decoding, the on-disk frame
cache, the sizing rules, and an ordered thread-pool prefetcher that prepares the frames of upcoming
items while the model runs. Training, evaluation, RL and inference all take their frames from here.

Rules (spec evaluation.md "Frames", model_and_dift.md section 2):
- 1 fps: count = max(1, floor(duration_s * fps)); frame i at source index floor(i * source_fps / fps),
  clamped to the last frame, duplicates dropped.
- At most `MAX_FRAMES` (50) reach the model: longer lists are sampled uniformly (linspace, truncated).
  Only those are decoded into memory and stored in the frame cache (JPEG quality 75, as the original's
  evaluation wrote them).
- Decoding: decord when installed, then PyAV, then OpenCV (the original's order); a video whose
  decoder delivers fewer frames than its container lists (a truncated file) is an error.
- Frames and helper images whose area exceeds 256*28*28 are downscaled (LANCZOS, aspect kept, sides
  floored to multiples of 28, at least 28); qwen-vl-utils then fits them to the model's grid.
- Video frames are given to the processor as one video at `FRAME_FPS` (second_per_grid_ts 2.0),
  in training, evaluation, RL and inference alike.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

FRAME_FPS = 1.0  # frames per second given to the model, everywhere
MAX_FRAMES = 50  # frames per video that reach the model
MAX_IMAGE_PIXELS = 256 * 28 * 28  # 200,704: larger frames / helper images are downscaled on load
PIXEL_FACTOR = 28  # patch 14 x spatial merge 2
CACHE_JPEG_QUALITY = 75  # the original's evaluation saved its frames with PIL's default quality, 75
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


def sample_indices(num_frames: int, source_fps: float, fps: float = FRAME_FPS,
                   max_frames: int | None = None) -> list[int]:
    """The source frames a caller gets: the 1 fps rule, then at most `max_frames` of those by
    `uniform_subsample` (evaluation and inference 50, RL 16); None keeps every 1 fps frame."""
    indices = one_fps_indices(num_frames, source_fps, fps)
    return indices if max_frames is None else uniform_subsample(indices, max_frames)


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
#
# Backends in the original's order: decord when installed, then PyAV, then OpenCV. Each decodes only
# what it keeps: decord seeks to each sampled frame; PyAV and OpenCV stream through the video and
# convert only the sampled frames, so memory holds one frame at a time, never the whole video.
#
# Completeness rule: a backend must deliver every frame the container lists (its header's frame
# count). A video cut before its end (its index at the front, so it still opens) lists frames it no
# longer holds; decoders then stop early or repeat the last good frame. That is a VideoDecodeError,
# never fewer or repeated frames. Streaming to the end costs under two seconds of video more than
# stopping at the last sample (the 1 fps samples always include the last full second).


@dataclass(frozen=True)
class VideoInfo:
    """What a backend reads from a video's header: its frame count and frame rate."""

    num_frames: int
    source_fps: float


def container_frame_count(path: str | os.PathLike) -> int:
    """The frame count the container's header lists (read by PyAV; 0 when it lists none).
    VideoDecodeError when the container cannot be opened or holds no video stream."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            return int(container.streams.video[0].frames or 0)
    except VideoDecodeError:
        raise
    except Exception as err:
        raise VideoDecodeError(_first_line(err)) from None


def _listed_or_unknown(path: Path) -> int:
    """`container_frame_count`, 0 when PyAV cannot read the header (then only the sampled frames
    are checked)."""
    try:
        return container_frame_count(path)
    except VideoDecodeError:
        return 0


def _first_line(err: BaseException) -> str:
    """An exception as one short line (decord's messages start with a time and a C++ source path)."""
    lines = str(err).strip().splitlines()
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: (Error: )?", "", lines[0] if lines else "") or type(err).__name__
    return text[:200]


def _shortfall(listed: int, delivered: int) -> VideoDecodeError:
    return VideoDecodeError(f"the container lists {listed} frames, the decoder delivered {delivered} "
                            "(truncated or corrupt file)")


class _DecordReader:
    """decord's VideoReader: frame count and fps from its index, frames by seeking."""

    def __init__(self, path: Path):
        import decord

        # The header first: decord prints to stderr on a container it cannot open, and it indexes
        # only the packets it can read, so the listed count is what reveals a truncated file.
        listed = container_frame_count(path)
        decord.logging.set_level(decord.logging.QUIET)  # failures are reported in our one line
        try:
            self._reader = decord.VideoReader(str(path))
        except Exception as err:  # it reads every packet here: a cut or damaged one fails
            raise VideoDecodeError(f"cannot read the video's packets ({_first_line(err)}): "
                                   "truncated or corrupt file") from None
        self.info = VideoInfo(len(self._reader), float(self._reader.get_avg_fps()))
        if listed and self.info.num_frames < listed:
            raise _shortfall(listed, self.info.num_frames)

    def frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        for index in indices:
            frame = self._reader[index].asnumpy()
            if frame.ndim != 3 or frame.shape[2] != 3:  # decord 0.6 mis-shapes some sizes (48x48: 4 channels)
                raise VideoDecodeError(f"decord returned frame {index} with shape {frame.shape}")
            yield frame

    def close(self) -> None:
        del self._reader


class _PyAVReader:
    """PyAV: frame count from the container header (or a count of its packets), frames by streaming."""

    def __init__(self, path: Path):
        import av

        self._container = av.open(str(path))
        try:
            self._stream = self._container.streams.video[0]
        except IndexError:
            self._container.close()
            raise VideoDecodeError("no video stream") from None
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.listed = int(self._stream.frames or 0)
        num_frames = self.listed
        if not num_frames:  # a container without a frame count: count its packets (no decoding)
            num_frames = sum(1 for p in self._container.demux(self._stream) if p.size)
            self._container.seek(0)
        self.info = VideoInfo(num_frames, float(rate) if rate else 0.0)

    def frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        wanted = set(indices)
        delivered = 0
        try:
            for frame in self._container.decode(self._stream):
                if delivered in wanted:
                    yield frame.to_ndarray(format="rgb24")
                delivered += 1
        except Exception as err:  # a cut or damaged packet
            raise VideoDecodeError(f"the decoder failed after delivering {delivered} of {self.info.num_frames} "
                                   f"frames ({_first_line(err)}): truncated or corrupt file") from None
        if delivered < max(self.listed, max(wanted, default=-1) + 1):
            raise _shortfall(max(self.listed, self.info.num_frames), delivered)

    def close(self) -> None:
        self._container.close()


class _OpenCVReader:
    """OpenCV: frame count and fps from its properties (30 fps assumed when it reports none, as the
    original), frames by grabbing through the video and retrieving only the sampled ones."""

    def __init__(self, path: Path):
        import cv2

        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # quiet: failures are reported in our line
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoDecodeError("cannot open the file")
        self.info = VideoInfo(int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)), self._cap.get(cv2.CAP_PROP_FPS))
        self.listed = _listed_or_unknown(path)

    def frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        import cv2

        wanted = set(indices)
        delivered = 0
        while self._cap.grab():
            if delivered in wanted:
                ok, bgr = self._cap.retrieve()
                if not ok:
                    raise VideoDecodeError(f"frame {delivered} could not be decoded")
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            delivered += 1
        if delivered < max(self.listed, max(wanted, default=-1) + 1):
            raise _shortfall(max(self.listed, self.info.num_frames), delivered)

    def close(self) -> None:
        self._cap.release()


_READERS = {"decord": _DecordReader, "pyav": _PyAVReader, "opencv": _OpenCVReader}
_MODULES = {"decord": "decord", "pyav": "av", "opencv": "cv2"}


def available_backends() -> list[str]:
    """The installed decoding backends, in the order they are tried."""
    return [name for name in _READERS if importlib.util.find_spec(_MODULES[name]) is not None]


@contextmanager
def _open(path: Path, backend: str):
    """A backend's reader; its library's errors become VideoDecodeError with one line."""
    try:
        reader = _READERS[backend](path)
    except VideoDecodeError:
        raise
    except Exception as err:
        raise VideoDecodeError(_first_line(err)) from None
    try:
        yield reader
    finally:
        reader.close()


def probe_video(path: str | os.PathLike, backend: str) -> VideoInfo:
    """Frame count and fps as one backend reads them (nothing decoded)."""
    with _open(Path(path), backend) as reader:
        return reader.info


def _iter_backend(path: Path, backend: str, fps: float, max_frames: int | None) -> Iterator[np.ndarray]:
    with _open(path, backend) as reader:
        indices = sample_indices(reader.info.num_frames, reader.info.source_fps, fps, max_frames)
        if not indices:
            raise VideoDecodeError("the container lists no video frames")
        try:
            yield from reader.frames(indices)
        except VideoDecodeError:
            raise
        except Exception as err:
            raise VideoDecodeError(_first_line(err)) from None


def decode_with_fallback(path: str | os.PathLike, consume: Callable[[Iterator[np.ndarray]], object],
                         fps: float = FRAME_FPS, max_frames: int | None = None,
                         backends: Sequence[str] | None = None):
    """`consume(frames)` with the sampled frames of the first backend that decodes the whole video.

    `consume` must use up the iterator (a backend's error surfaces at its end) and start afresh on
    each call: a backend that fails part-way is followed by the next one from the first frame.
    A video no backend decodes raises VideoDecodeError naming the file and each backend's reason.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"cannot decode {path}: empty file")
    failed: dict[str, list[str]] = {}  # reason -> the backends that gave it
    for backend in backends or available_backends():
        frames = _iter_backend(path, backend, fps, max_frames)
        try:
            return consume(frames)
        except VideoDecodeError as err:  # try the next backend
            failed.setdefault(str(err), []).append(backend)
        finally:
            frames.close()  # the reader is released even when `consume` stopped early
    reasons = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in failed.items())
    raise VideoDecodeError(f"cannot decode {path}: {reasons or 'no decoding backend installed'}")


def decode_video_frames(path: str | os.PathLike, fps: float = FRAME_FPS, max_frames: int | None = None,
                        backend: str | None = None) -> list[np.ndarray]:
    """RGB frames sampled at `fps` (at most `max_frames` of them, by `uniform_subsample`), from the
    first backend that decodes the whole video, or from `backend` alone."""
    return decode_with_fallback(path, list, fps, max_frames, [backend] if backend else None)


def write_frames(frames: Iterable[np.ndarray], out_dir: str | os.PathLike, *, quality: int, start: int = 0,
                 replace: bool = True) -> list[Path]:
    """Write frames as JPEG frame_%04d.jpg (`quality` is the caller's rule: the frame cache's
    CACHE_JPEG_QUALITY, the data engine's own) into `out_dir` atomically (a temp folder renamed
    into place). Frames may come from an iterator: each is written as it arrives.

    `replace=False` keeps a non-empty `out_dir` that another writer put in place meanwhile (the
    frame cache: two processes extracting the same video produce the same files) instead of
    deleting it under a reader's feet.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        written = 0
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"frame_{i + start:04d}.jpg", quality=quality)
            written += 1
        if not written:
            raise ValueError(f"no frames to write into {out_dir}")
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
    """The sampled frames of a video, extracted once per (video path, size, mtime, fps, max frames,
    JPEG quality) under `root/<key>/frame_%04d.jpg`.

    Only the frames that can reach the model are stored (at most `max_frames`, chosen by
    `sample_indices`), so the cache grows with the frames sampled, not with the video's length, and
    requests of one video with different sampling (RL's 16 frames, evaluation's 50) get separate
    folders. Frames always go through JPEG (as the original's extraction did), so the first run and
    every cached run feed the model identical pixels. Safe to share between threads (a video is
    decoded once even if several threads ask for it at the same time) and between processes
    (folders appear by atomic rename; a finished one is never replaced). `decoded` / `hits` count
    decodes and cache hits of this object.
    """

    def __init__(self, root: str | os.PathLike | None = None, fps: float = FRAME_FPS,
                 quality: int = CACHE_JPEG_QUALITY):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.fps = fps
        self.quality = quality
        self.decoded = 0
        self.hits = 0
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def key(self, video_path: str | os.PathLike, max_frames: int | None = MAX_FRAMES) -> str:
        path = Path(video_path).resolve()
        st = path.stat()
        raw = f"{path}|{st.st_size}|{st.st_mtime_ns}|{self.fps}|{max_frames}|{self.quality}"
        return f"{path.stem[:40]}-{hashlib.sha1(raw.encode()).hexdigest()[:16]}"

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def frame_paths(self, video_path: str | os.PathLike, max_frames: int | None = MAX_FRAMES) -> list[Path]:
        """The cached frame files of a video (at most `max_frames`; None: every 1 fps frame),
        extracting them first if needed."""
        if not Path(video_path).is_file():
            raise FileNotFoundError(f"video not found: {video_path}")
        key = self.key(video_path, max_frames)
        folder = self.root / key
        with self._key_lock(key):
            files = sorted(folder.glob(FRAME_GLOB)) if folder.is_dir() else []
            if files:
                with self._lock:
                    self.hits += 1
                return files
            files = decode_with_fallback(
                video_path, lambda frames: write_frames(frames, folder, quality=self.quality, replace=False),
                self.fps, max_frames)
            with self._lock:
                self.decoded += 1
            return files


def load_video_frames(video_path: str | os.PathLike, cache: FrameCache | None = None,
                      max_frames: int = MAX_FRAMES, max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """The frames the model sees for a video: 1 fps, at most `max_frames`, cached on disk, area-capped."""
    cache = cache or FrameCache()
    return load_images(cache.frame_paths(video_path, max_frames), max_pixels)


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
