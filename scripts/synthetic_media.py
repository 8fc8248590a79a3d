"""Synthetic frames and videos with known motion: the pixels of the embedded default data.

A coloured square moves across a textured background by a known per-frame step; the background can
shift too (a camera pan). Used by the demo-data builders and the tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DIRECTIONS = {  # (dx, dy) per frame, image coordinates (y grows downwards)
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
    "left-up": (-1, -1), "left-down": (-1, 1), "right-up": (1, -1), "right-down": (1, 1), "stationary": (0, 0),
}


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (so a camera shift is visible), uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def moving_square_frames(n: int, width: int = 112, height: int = 112, direction: str = "right", step: int = 6,
                         size: int = 20, color=(220, 40, 40), camera_dx: int = 0, seed: int = 0) -> list[Image.Image]:
    """n frames of a square moving in `direction` by `step` px a frame over a background that
    itself shifts by `camera_dx` px a frame (content moves left when the camera pans right)."""
    dx, dy = DIRECTIONS[direction]
    bg = background(width * 2, height, seed)
    frames = []
    x0 = width // 2 - size // 2 - dx * step * (n - 1) // 2
    y0 = height // 2 - size // 2 - dy * step * (n - 1) // 2
    for i in range(n):
        offset = (width // 2 + camera_dx * i) % width
        img = Image.fromarray(np.ascontiguousarray(bg[:, offset:offset + width]))
        x, y = x0 + dx * step * i, y0 + dy * step * i
        ImageDraw.Draw(img).rectangle([x, y, x + size, y + size], fill=color)
        frames.append(img)
    return frames


def square_mask(frame_index: int, n: int, width: int = 112, height: int = 112, direction: str = "right",
                step: int = 6, size: int = 20) -> np.ndarray:
    """The boolean mask of the square in frame `frame_index` of `moving_square_frames(n, ...)`."""
    dx, dy = DIRECTIONS[direction]
    x0 = width // 2 - size // 2 - dx * step * (n - 1) // 2 + dx * step * frame_index
    y0 = height // 2 - size // 2 - dy * step * (n - 1) // 2 + dy * step * frame_index
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, y0):max(0, y0 + size + 1), max(0, x0):max(0, x0 + size + 1)] = True
    return mask


def write_mp4(path: str | Path, frames: Iterable[Image.Image], fps: float = 4.0, faststart: bool = False) -> Path:
    """Encode frames as an H.264 (or MPEG-4) mp4 with PyAV. `faststart` puts the index (moov) at
    the front, so a copy cut before its end still opens (a truncated download)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    w, h = first.size
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {}) as container:
        try:
            stream = container.add_stream("libx264", rate=int(fps))
        except Exception:  # an ffmpeg build without x264
            stream = container.add_stream("mpeg4", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_image(img.convert("RGB"))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
