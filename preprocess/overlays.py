"""Pixels drawn from masks: the helper images ("masked frames", the model's mental imagery), the
masks step's `masked_frames/` previews, and mask boxes.

Helper image (spec preprocess §6): mask resized to the frame if needed, > 127; rejected when it
covers less than 0.1% of the frame; inside it 60% frame + 40% red; outer contours in red, 2 px.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .layout import atomic_path

MIN_MASK_FRACTION = 0.001
RED = np.array([255, 0, 0], dtype=np.float32)  # RGB
JPEG_QUALITY = 95


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A saved mask (uint8 0/255 .npy) as bool, resized (nearest) to `size` = (width, height) if given."""
    mask = np.load(path)
    if mask.ndim == 3:
        mask = mask[..., 0] if mask.shape[-1] <= 4 else mask[0]
    mask = np.asarray(mask, dtype=np.uint8)
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST)
    return mask > 127


def save_jpeg_atomic(path: str | Path, rgb: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return Path(path)


def helper_image(frame: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The highlighted frame (uint8 RGB), or None when the mask is too small to show anything."""
    if mask.shape != frame.shape[:2]:
        mask = cv2.resize(mask.astype(np.uint8) * 255, (frame.shape[1], frame.shape[0]),
                          interpolation=cv2.INTER_NEAREST) > 127
    if mask.mean() < MIN_MASK_FRACTION:
        return None
    out = frame.astype(np.float32)
    out[mask] = 0.6 * out[mask] + 0.4 * RED
    out = out.round().clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in RED), 2)
    return out


def write_helper_image(frame_path: str | Path, mask_path: str | Path, out_path: str | Path) -> bool:
    """Draw and save a helper image; False (nothing written) if the mask is missing or too small."""
    if not Path(mask_path).is_file() or not Path(frame_path).is_file():
        return False
    with Image.open(frame_path) as img:
        frame = np.asarray(img.convert("RGB"))
    image = helper_image(frame, load_mask(mask_path, (frame.shape[1], frame.shape[0])))
    if image is None:
        return False
    save_jpeg_atomic(out_path, image)
    return True


def masked_frame(frame: np.ndarray, dynamic: np.ndarray | None, static: np.ndarray | None) -> np.ndarray:
    """The masks step's preview: frame + 0.5 x mask added to red (dynamic) and blue (static)."""
    out = frame.astype(np.int16)
    if dynamic is not None:
        out[..., 0] += (dynamic * 127).astype(np.int16)
    if static is not None:
        out[..., 2] += (static * 127).astype(np.int16)
    return out.clip(0, 255).astype(np.uint8)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) of a bool mask in pixels (inclusive), None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
