"""Step `merge`: the per-clip files -> one QA JSONL per kind, all QA, the per-clip records, statistics.

In:  OUT/clips/<id>/{camera_qa.json, object_qa.json, clip.json, objects.json, masks.json}, OUT/state/
Out: OUT/qa/camera_qa.jsonl, OUT/qa/object_qa.jsonl, OUT/qa/qa_all.jsonl (camera items, then object
     items; clips in sorted order, items in the order the clip produced them: the same inputs and
     seed give the same bytes), OUT/clips.jsonl (one record per clip that has masks: the original
     stage-1 record), OUT/qa/merge_stats.json (counts). Every file is written atomically; rerunning
     rewrites them from the per-clip files.

    python -m preprocess merge --out data/engine
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from dift.core.cli import JobFailed, require_path

from .arguments import MergeArguments, parse_step_args
from .layout import (
    CAMERA_QA_JSONL,
    OBJECT_QA_JSONL,
    QA_ALL_JSONL,
    QA_DIR,
    ClipPaths,
    write_json_atomic,
    write_jsonl_atomic,
)
from .records import RecordError, read_clip_json, read_objects_json, read_qa_items
from .runner import StepState, clips_completed_by, setup_logging

log = logging.getLogger(__name__)
STEPS = ("frames", "objects", "masks", "camera_qa", "object_qa")


def clip_record(paths: ClipPaths) -> dict:
    """The original stage-1 record of one clip (paths relative to the output root)."""
    clip = read_clip_json(paths.clip_json)
    objects = read_objects_json(paths.objects_json)

    def masks(kind: str) -> list[str]:
        d = paths.mask_dir(kind)
        return [paths.rel(p) for p in sorted(d.glob("*.npy"))] if d.is_dir() else []

    return {
        "video_id": clip["video_id"], "group": clip["group"], "source_video": clip["source_video"],
        "dynamic_object": objects.get("dynamic_object"), "static_object": objects.get("static_object"),
        "frame_paths": [paths.rel(paths.frames_dir / f["file"]) for f in clip["frames"]],
        "frame_times_s": [f["time_s"] for f in clip["frames"]],
        "masked_frame_paths": [paths.rel(paths.masked_frames_dir / f["file"]) for f in clip["frames"]],
        "dynamic_mask_paths": masks("dynamic"), "static_mask_paths": masks("static"),
        "segments": clip["segments"], "caption": clip["scene_summary"],
    }


def merge(out_root: str | Path) -> dict:
    out_root = Path(out_root)
    log.info("merge: reading the per-clip files under %s", out_root)
    qa: dict[str, list[dict]] = {"camera": [], "object": []}
    seen: dict[str, str] = {}
    for kind in qa:
        for cid in clips_completed_by(out_root, f"{kind}_qa"):
            path = ClipPaths(out_root, cid).qa_json(kind)
            for i, item in enumerate(read_qa_items(path, f"{kind}_qa.json")):
                if item["id"] in seen:  # ids name the training records: a repeat would be a silent duplicate
                    raise RecordError(f"{path}: item {i}: field id: {item['id']!r} is also in {seen[item['id']]}")
                seen[item["id"]] = str(path)
                qa[kind].append(item)
    qa_dir = out_root / QA_DIR
    write_jsonl_atomic(qa_dir / CAMERA_QA_JSONL, qa["camera"])
    write_jsonl_atomic(qa_dir / OBJECT_QA_JSONL, qa["object"])
    write_jsonl_atomic(qa_dir / QA_ALL_JSONL, qa["camera"] + qa["object"])

    records = [clip_record(ClipPaths(out_root, cid)) for cid in clips_completed_by(out_root, "masks")]
    write_jsonl_atomic(out_root / "clips.jsonl", records)
    has_dyn = {r["video_id"] for r in records if r["dynamic_mask_paths"]}
    has_static = {r["video_id"] for r in records if r["static_mask_paths"]}
    stats = {
        "clips": {step: {"completed": len(StepState(out_root, step).completed()),
                         "failed": len(StepState(out_root, step).failed())} for step in STEPS},
        "failed": {step: StepState(out_root, step).failed() for step in STEPS},
        "masked_clips": len(records), "with_dynamic_mask": len(has_dyn), "with_static_mask": len(has_static),
        "with_both": len(has_dyn & has_static), "with_no_mask": len(records) - len(has_dyn | has_static),
        "total_frames": sum(len(r["frame_paths"]) for r in records),
        "groups": sorted({r["group"] for r in records}),
        "qa_items": {"camera": len(qa["camera"]), "object": len(qa["object"])},
        "qa_types": dict(sorted(Counter(item["type"] for item in qa["camera"] + qa["object"]).items())),
        "answer_letters": dict(sorted(Counter(item["answer"] for item in qa["camera"] + qa["object"]).items())),
    }
    write_json_atomic(qa_dir / "merge_stats.json", stats)
    log.info("merge: %d camera + %d object items from %d clips -> %s", len(qa["camera"]), len(qa["object"]),
             len(records), qa_dir)
    return stats


def run(args: MergeArguments) -> int:
    setup_logging(args.log_level)
    require_path("--out", args.out, "dir")
    if not clips_completed_by(args.out, "masks"):
        raise JobFailed(f"merge: no clip has finished the masks step in {args.out} (run the steps before merge first)")
    merge(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess merge` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args("merge", argv))
