"""Step `frames`: the annotated frames of each SpatialVID clip, with their real times.

In:  INPUT/videos/<group>/<id>.mp4 and INPUT/annotations/<group>/<id>/{indexes.txt, instructions.json, caption.json}
Out: OUT/clips/<id>/frames/frame_%04d.jpg (source resolution, numbered 0..N-1 in indexes.txt order)
     OUT/clips/<id>/clip.json
A clip whose indexes.txt lists no frame or more than MAX_FRAMES (50), whose annotation files are
malformed, or whose frames cannot be decoded, fails with that reason (state/frames/failed.jsonl).

Time axis: frame n's time is its source video frame index (indexes.txt's second column) divided by
the video's frame rate, not "frame n = n seconds" as the original assumed. Camera segments
"a->b" in instructions.json are read as indexes.txt sequence numbers (as the original did, which
looked up frame_{a:04d}) and stored with the frame numbers and times of both ends.

    python -m preprocess frames --input data/SpatialVID --out data/engine --workers 4
"""

from __future__ import annotations

import logging
from pathlib import Path

from dift.core.cli import JobFailed, UsageError, require_path
from dift.core.frames import MAX_FRAMES, write_frames

from .arguments import FramesArguments, parse_step_args
from .layout import ClipPaths, frame_file_name, write_json_atomic
from .runner import ClipFailure, finish, run_step, setup_logging
from .spatialvid import (
    SourceClip,
    decode_frames_at,
    list_source_clips,
    read_indexes,
    read_instructions,
    read_scene_summary,
)

log = logging.getLogger(__name__)
STEP = "frames"
FRAME_JPEG_QUALITY = 95  # the original's frames step wrote with cv2.imwrite's default quality (95)


def extract_clip(source: SourceClip, out_root: Path, max_frames: int = MAX_FRAMES) -> dict:
    """Write one clip's frames and clip.json; ClipFailure with the reason if it cannot."""
    pairs = read_indexes(source.indexes_path)
    if not pairs:
        raise ClipFailure(f"{source.indexes_path}: no frames listed")
    if len(pairs) > max_frames:
        raise ClipFailure(f"{source.indexes_path}: {len(pairs)} frames listed, more than {max_frames}")
    segments_raw = read_instructions(source.instructions_path)
    decoded, fps = decode_frames_at(source.video_path, [index for _, index in pairs])
    kept = [(seq, index) for seq, index in pairs if index in decoded]
    if not kept:
        raise ClipFailure(f"{source.video_path}: none of the {len(pairs)} listed frames could be decoded")
    if len(kept) < len(pairs):  # unreadable frames are skipped, as in the original
        log.warning("%s: %d of %d listed frames could not be decoded", source.video_id, len(pairs) - len(kept), len(pairs))

    paths = ClipPaths(out_root, source.video_id)
    write_frames([decoded[index] for _, index in kept], paths.frames_dir, quality=FRAME_JPEG_QUALITY)
    frames = [{"file": frame_file_name(n), "seq": seq, "source_index": index, "time_s": round(index / fps, 3)}
              for n, (seq, index) in enumerate(kept)]
    number_of_seq = {f["seq"]: n for n, f in enumerate(frames)}
    segments = []
    for seg in segments_raw:
        a, b = number_of_seq.get(seg.start_seq), number_of_seq.get(seg.end_seq)
        if a is None or b is None:
            log.info("%s: segment %s dropped (an end frame is not among the extracted frames)", source.video_id, seg.key)
            continue
        segments.append({"key": seg.key, "start_frame": a, "end_frame": b, "start_time_s": frames[a]["time_s"],
                         "end_time_s": frames[b]["time_s"], "moves": list(seg.moves)})
    write_json_atomic(paths.clip_json, {
        "video_id": source.video_id, "group": source.group, "source_video": str(source.video_path),
        "source_fps": fps, "width": int(decoded[kept[0][1]].shape[1]), "height": int(decoded[kept[0][1]].shape[0]),
        "frames": frames, "segments": segments, "scene_summary": read_scene_summary(source.caption_path),
    })
    return {"frames": len(frames), "segments": len(segments)}


def run(args: FramesArguments) -> int:
    setup_logging(args.log_level)
    require_path("--input", args.input, "dir")
    if not (Path(args.input) / "videos").is_dir():
        raise UsageError(f"--input {args.input}: no videos/ folder (expected SpatialVID's videos/<group>/<id>.mp4)")
    out_root = Path(args.out)
    sources: dict[str, SourceClip] = {}
    duplicates: dict[str, str] = {}
    for src in list_source_clips(args.input):
        if src.video_id in sources:  # ids name the clip folders, so they must be unique
            duplicates[src.video_id] = f"video id also in group {sources[src.video_id].group}"
        else:
            sources[src.video_id] = src
    if not sources:
        raise JobFailed(f"frames: no clips in {Path(args.input) / 'videos'} (expected videos/<group>/<id>.mp4)")
    clips = args.select(sorted(sources))
    if not clips:
        raise JobFailed(f"frames: --clips {args.clips}: none of these clips is in {Path(args.input) / 'videos'}")

    def process(clip_id: str) -> dict:
        if clip_id in duplicates:
            raise ClipFailure(duplicates[clip_id])
        return extract_clip(sources[clip_id], out_root, args.max_frames)

    return finish(run_step(out_root, STEP, clips, process, args.workers, args.retry_failed), args.max_skip_fraction)


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess frames` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args(STEP, argv))
