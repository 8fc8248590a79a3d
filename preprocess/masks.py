"""Step `masks`: SAM3 masks of each clip's named objects (transformers' Sam3 classes).

In:  OUT/clips/<id>/frames/, objects.json (clips the `objects` step completed); a SAM3 checkpoint
     folder loadable with from_pretrained (facebook/sam3, or scripts/build_tiny_sam3.py's tiny one)
Out: OUT/clips/<id>/masks_dynamic/frame_%04d.npy, masks_static/frame_%04d.npy (uint8 0/255, frame
     size; only frames where the object was found), masked_frames/frame_%04d.jpg (every frame:
     dynamic mask added to red, static to blue), masks.json (labels and per-frame scores)

Default mode, as the original: each frame is prompted with the object's text on its own (the
image model, frames batched), but the BEST-scoring instance is kept, not instance 0. With
`--tracking` the video model prompts once and propagates through the clip; the one track with the
highest summed score over the clip is kept, so the object's identity cannot jump between frames.

    python -m preprocess masks --out data/engine --model facebook/sam3 [--tracking] [--device cuda]
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from dift.core.cli import JobFailed, UsageError, require_path
from dift.core.frames import list_frame_files

from .arguments import MasksArguments, parse_step_args
from .layout import ClipPaths, atomic_folder, frame_number, write_json_atomic
from .overlays import masked_frame
from .records import read_objects_json
from .runner import StepState, clips_completed_by, finish, run_step, select_clips, setup_logging

log = logging.getLogger(__name__)
STEP = "masks"
KINDS = ("dynamic", "static")


class Sam3Segmenter:
    """Text-prompted masks for a list of frames; one model instance shared by worker threads."""

    def __init__(self, model_path: str, tracking: bool = False, score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, batch_size: int = 8, device: str = "auto", dtype: str = "auto"):
        import torch

        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.dtype = getattr(torch, dtype)
        self.tracking, self.batch_size = tracking, batch_size
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.lock = threading.Lock()  # one model, many clip threads: one forward at a time
        if tracking:
            from transformers import Sam3VideoModel, Sam3VideoProcessor

            self.model = Sam3VideoModel.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
            self.processor = Sam3VideoProcessor.from_pretrained(model_path)
        else:
            from transformers import Sam3Model, Sam3Processor

            self.model = Sam3Model.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
            self.processor = Sam3Processor.from_pretrained(model_path)
        log.info("SAM3 %s on %s (%s, %s)", model_path, self.device, dtype, "tracking" if tracking else "per-frame prompts")

    def segment(self, frames: list[Image.Image], text: str) -> list[tuple[np.ndarray | None, float]]:
        """Per frame: (bool mask at frame size, score) of the kept instance, or (None, best score)."""
        with self.lock, self.torch.inference_mode():
            return self._track(frames, text) if self.tracking else self._per_frame(frames, text)

    def _per_frame(self, frames, text):
        out = []
        for start in range(0, len(frames), self.batch_size):
            batch = frames[start:start + self.batch_size]
            inputs = self.processor(images=batch, text=[text] * len(batch), return_tensors="pt").to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            outputs = self.model(**inputs)
            results = self.processor.post_process_instance_segmentation(
                outputs, threshold=self.score_threshold, mask_threshold=self.mask_threshold,
                target_sizes=[(im.height, im.width) for im in batch])
            for res in results:
                if len(res["scores"]) == 0:
                    out.append((None, 0.0))
                    continue
                best = int(res["scores"].float().argmax())  # the best-scoring instance, not instance 0
                out.append((res["masks"][best].bool().cpu().numpy(), float(res["scores"][best])))
        return out

    def _track(self, frames, text):
        session = self.processor.init_video_session(video=[np.asarray(f) for f in frames], inference_device=self.device,
                                                    dtype=self.dtype)
        self.processor.add_text_prompt(session, text)
        per_frame: list[dict[int, tuple[np.ndarray, float]]] = [{} for _ in frames]
        totals: dict[int, float] = {}
        for output in self.model.propagate_in_video_iterator(session):
            post = self.processor.postprocess_outputs(session, output)
            for oid, score, mask in zip(post["object_ids"].tolist(), post["scores"].tolist(), post["masks"]):
                if score < self.score_threshold:
                    continue
                per_frame[output.frame_idx][oid] = (mask.bool().cpu().numpy(), float(score))
                totals[oid] = totals.get(oid, 0.0) + float(score)
        if not totals:
            return [(None, 0.0) for _ in frames]
        track = max(sorted(totals), key=lambda oid: totals[oid])  # one identity for the whole clip
        return [per_frame[i].get(track, (None, 0.0)) for i in range(len(frames))]


def segment_clip(segmenter: Sam3Segmenter, paths: ClipPaths) -> dict:
    """Masks and previews of one clip (each output folder replaced atomically)."""
    objects = read_objects_json(paths.objects_json)
    files = list_frame_files(paths.frames_dir)
    frames = []
    for f in files:
        with Image.open(f) as img:
            frames.append(img.convert("RGB"))
    masks: dict[str, list] = {}
    info: dict[str, dict] = {}
    for kind in KINDS:
        label = objects.get(f"{kind}_object")
        masks[kind] = segmenter.segment(frames, label) if label else [(None, 0.0)] * len(frames)
        info[kind] = {"label": label, "scores": {f.stem: round(s, 4) for f, (m, s) in zip(files, masks[kind]) if m is not None}}
        with atomic_folder(paths.mask_dir(kind)) as tmp:
            for f, (mask, _) in zip(files, masks[kind]):
                if mask is not None:
                    np.save(tmp / paths.mask_file(kind, frame_number(f)).name, mask.astype(np.uint8) * 255)
    with atomic_folder(paths.masked_frames_dir) as tmp:
        for i, f in enumerate(files):
            preview = masked_frame(np.asarray(frames[i]), masks["dynamic"][i][0], masks["static"][i][0])
            Image.fromarray(preview).save(tmp / f.name, quality=90)
    write_json_atomic(paths.masks_json, info)
    return {f"{kind}_masks": len(info[kind]["scores"]) for kind in KINDS}


def load_segmenter(args: MasksArguments) -> Sam3Segmenter:
    """SAM3 from --model, with one-line errors for a device that is not there or a model that does not load."""
    require_path("--model", args.model, "model")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is visible (use --device cpu or auto)")
    try:
        return Sam3Segmenter(args.model, args.tracking, args.score_threshold, args.mask_threshold, args.batch_size,
                             args.device, args.dtype)
    except (OSError, ValueError) as err:
        raise JobFailed(f"--model {args.model}: cannot load a SAM3 checkpoint ({' '.join(str(err).split())[:200]})") from None


def run(args: MasksArguments) -> int:
    setup_logging(args.log_level)
    require_path("--out", args.out, "dir")
    out_root = Path(args.out)
    clips = select_clips(clips_completed_by(out_root, "objects"), args, STEP, "objects", out_root)
    segmenter = None

    def process(clip_id: str) -> dict:
        return segment_clip(segmenter, ClipPaths(out_root, clip_id))

    # loading SAM3 costs time and memory: only when a clip is left to do (a rerun of a finished step
    # loads nothing); loaded before the loop, so a bad --model is one error, not a failure per clip
    if StepState(out_root, STEP).pending(clips, args.retry_failed):
        segmenter = load_segmenter(args)
    return finish(run_step(out_root, STEP, clips, process, args.workers, args.retry_failed), args.max_skip_fraction)


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess masks` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args(STEP, argv))
