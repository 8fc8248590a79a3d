"""Model inputs from rendered texts and visuals: one processor call per batch.

Every stage goes through `encode_batch`, so frames reach the processor the same way everywhere:
qwen-vl-utils' fit, one video per sample at `FRAME_FPS` (second_per_grid_ts = 2.0), and the
reference per-frame pixel cap.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from dift.core.frames import FRAME_FPS, fit_image, fit_video_frames

Visual = Sequence[Image.Image] | Image.Image | None


def prepare_visual(visual: Visual):
    """('video', (T,3,H,W) tensor) for a frame list, ('image', PIL) for one image, (None, None) for none."""
    if visual is None:
        return None, None
    if isinstance(visual, (list, tuple)):
        if not visual:
            raise ValueError("a video with no frames")
        return "video", fit_video_frames(visual)
    return "image", fit_image(visual)


def encode_batch(processor, texts: Sequence[str], visuals: Sequence[Visual], padding_side: str = "right",
                 prepared: Sequence[tuple] | None = None):
    """Tokenise `texts` (each holding at most one vision block) with their visuals.

    Returns the processor's BatchFeature: input_ids, attention_mask, mm_token_type_ids and, as
    present, pixel_values/image_grid_thw and pixel_values_videos/video_grid_thw/second_per_grid_ts.
    `prepared` (from `prepare_visual`) skips re-fitting visuals that were fitted already.
    """
    if len(texts) != len(visuals):
        raise ValueError(f"{len(texts)} texts but {len(visuals)} visuals")
    prepared = prepared if prepared is not None else [prepare_visual(v) for v in visuals]
    images = [v for kind, v in prepared if kind == "image"]
    videos = [v for kind, v in prepared if kind == "video"]
    kwargs = {}
    if videos:
        kwargs["videos"] = videos
        # Frames are already sampled at FRAME_FPS: say so, so the processor's M-RoPE time step is
        # temporal_patch_size / FRAME_FPS = 2.0 s (the original used 1.0 in training, 2.0 in evaluation).
        kwargs["video_metadata"] = [{"fps": FRAME_FPS, "total_num_frames": v.shape[0],
                                     "frames_indices": list(range(v.shape[0]))} for v in videos]
        kwargs["cap_pixels_per_frame"] = True
    if images:
        kwargs["images"] = images
    return processor(text=list(texts), padding=True, padding_side=padding_side, return_tensors="pt", **kwargs)


def encode_helper_images(processor, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """Pixels and grids of the helper images (the latent targets): one image-processor call."""
    fitted = [fit_image(img) for img in images]
    out = processor.image_processor(images=fitted, return_tensors="pt")
    return {"pixel_values_latent": out["pixel_values"], "image_grid_thw_latent": out["image_grid_thw"]}
