"""Step `objects`: an LLM names one clearly moving and one static object of each clip.

In:  OUT/clips/<id>/frames/ (clips the `frames` step completed)
Out: OUT/clips/<id>/objects.json {"dynamic_object": str | null, "static_object": str | null}
At most 10 frames (integer linspace) go to the LLM as base64 JPEG data URLs after one text part.
The reply must be a JSON object with both fields (string, or null / "null" in any case for none).
An unusable reply after `--llm_tries` requests, or a service that keeps failing, fails the clip
with the reason (the original silently recorded "no objects" instead).

    OPENAI_BASE_URL=... OPENAI_API_KEY=... python -m preprocess objects --out data/engine
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dift.core.cli import require_path
from dift.core.frames import list_frame_files

from .arguments import LLMArguments, StepArguments, parse_step_args
from .layout import ClipPaths, write_json_atomic
from .llm import (
    ClipLLM,
    LLMClient,
    LLMReplyError,
    LLMUnavailable,
    ReplyInvalid,
    image_part,
    require_fields,
    text_part,
)
from .runner import ClipFailure, StepState, clips_completed_by, finish, run_step, select_clips, setup_logging

log = logging.getLogger(__name__)
STEP = "objects"
TASK = "objects"
MAX_LLM_FRAMES = 10

PROMPT = (
    "These are {n} frames of one video, in time order. Name two objects visible in ALL frames:\n"
    "1. dynamic_object: one object that is clearly moving (itself, not because the camera moves);\n"
    "2. static_object: one object that does not move in the scene (a good reference for camera motion).\n"
    "Both must be prominent. Give each a short label of 3-8 words with its colour or shape, usable as a "
    "segmentation prompt (e.g. \"red car on the left\"). Use null when there is no such object.\n"
    'Answer with ONLY a JSON object: {{"dynamic_object": "..." or null, "static_object": "..." or null}}'
)


def sample_for_llm(files: list, limit: int = MAX_LLM_FRAMES) -> list:
    """At most `limit` items at integer linspace positions (first and last included)."""
    if len(files) <= limit:
        return list(files)
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, limit).astype(int)]


def object_label(value) -> str | None:
    """A usable label, or None for null / "null" / "none" / empty (any case)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReplyInvalid(f"object label must be a string or null, got {type(value).__name__}")
    label = " ".join(value.split()).strip(" .\"'")
    return None if label.lower() in ("", "null", "none", "n/a") else label


def parse_objects(obj: dict) -> dict:
    require_fields(obj, "dynamic_object", "static_object")
    return {"dynamic_object": object_label(obj["dynamic_object"]), "static_object": object_label(obj["static_object"])}


def name_objects(llm: ClipLLM, clip_id: str, frames_dir: Path) -> dict:
    files = sample_for_llm(list_frame_files(frames_dir))
    content = [text_part(PROMPT.format(n=len(files)))] + [image_part(f) for f in files]
    return llm.ask_json(content, parse_objects, trace=f"{clip_id}/{TASK}")


def run(args: StepArguments, llm_args: LLMArguments) -> int:
    setup_logging(args.log_level)
    require_path("--out", args.out, "dir")
    out_root = Path(args.out)
    llm = LLMClient(llm_args)
    clips = select_clips(clips_completed_by(out_root, "frames"), args, STEP, "frames", out_root)
    state = StepState(out_root, STEP)

    def process(clip_id: str) -> dict:
        paths = ClipPaths(out_root, clip_id)
        clip_llm = llm.for_clip(state.replies_path(clip_id))
        try:
            objects = name_objects(clip_llm, clip_id, paths.frames_dir)
        except (LLMReplyError, LLMUnavailable) as err:
            raise ClipFailure(str(err)) from None
        write_json_atomic(paths.objects_json, objects)
        return {"with_dynamic": int(objects["dynamic_object"] is not None),
                "with_static": int(objects["static_object"] is not None),
                **({"llm_replies_reused": clip_llm.cache.hits} if clip_llm.cache.hits else {})}

    return finish(run_step(out_root, STEP, clips, process, args.workers, args.retry_failed), args.max_skip_fraction)


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess objects` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args(STEP, argv))
