"""Step `camera_qa`: camera-motion multiple-choice items with an imagery chain of thought.

In:  OUT/clips/<id>/{clip.json, objects.json, frames/, masks_static/} (clips the `masks` step completed)
Out: OUT/clips/<id>/masked_static_overlays/seg_{a}_to_{b}_f{frame:04d}.jpg (helper images)
     OUT/clips/<id>/camera_qa.json (the clip's items, see preprocess.qa; [] when none)

Per camera segment "a->b" of instructions.json (spec preprocess §7): the static object's mask must
exist at both ends (and is highlighted there); with k > 1 moves, min(k-1, 2) random frames strictly
inside the segment are added; the LLM verifies the highlights are one and the same static object
(JSON {"answer": "YES" | "NO"}, exact); the options come from preprocess.labels; the LLM rewrites
the question (6 styles in turn); the CoT must reach the correct letter. Item id: <video_id>_<a->b>.

    python -m preprocess camera_qa --out data/engine --seed 0 --workers 8
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from .arguments import LLMArguments, QAArguments, parse_step_args
from .labels import camera_choice, normalise_camera_move
from .layout import clip_rng
from .llm import ClipLLM, LLMReplyError, ReplyInvalid, image_part, require_fields, text_part
from .overlays import write_helper_image
from .qa import ClipInfo, qa_record, request_cot, rewrite_question, run_qa_step

log = logging.getLogger(__name__)
STEP = "camera_qa"

QUESTION_STYLES = (
    "concise and direct", "descriptive", "focused on what the viewer observes", "conversational",
    "formal, in cinematography terms", "asking to identify the camera technique",
)
FALLBACK_QUESTION = "What is the camera movement from {a:g}s to {b:g}s?"
VERIFY_PROMPT = (
    "The red highlights in these {n} frames should all mark the same static object: \"{label}\". Check identity "
    "(the same physical object in every frame), consistency, mask quality and visibility. "
    'Answer with ONLY a JSON object: {{"answer": "YES"}} or {{"answer": "NO"}}.'
)
QUESTION_PROMPT = (
    "Write a 1-2 sentence multiple-choice question asking how the camera moves from {a:g}s to {b:g}s of a video. "
    "Style: {style}. Do not mention any object, mask or highlight, and do not list options."
)


def _yes_no(obj: dict) -> bool:
    require_fields(obj, "answer")
    answer = str(obj["answer"]).strip().upper()
    if answer not in ("YES", "NO"):
        raise ReplyInvalid(f"answer must be YES or NO, got {obj['answer']!r}")
    return answer == "YES"


def verify_static(llm: ClipLLM, trace: str, label: str, images: list[Path]) -> bool:
    content = [image_part(p) for p in images] + [text_part(VERIFY_PROMPT.format(n=len(images), label=label))]
    try:
        return llm.ask_json(content, _yes_no, trace)
    except LLMReplyError as err:
        log.info("%s: verification unusable, segment skipped (%s)", trace, err)
        return False


def camera_items(llm: ClipLLM, args: QAArguments, info: ClipInfo) -> tuple[list[dict], dict]:
    """The clip's camera items and counts of what was skipped why."""
    counts: Counter = Counter()
    label = info.objects.get("static_object")
    mask_dir = info.paths.mask_dir("static")
    if not label or not mask_dir.is_dir() or not any(mask_dir.glob("*.npy")):
        counts["no_static_mask"] += 1
        return [], counts
    rng = clip_rng(args.seed, info.clip_id, STEP)
    items: list[dict] = []
    for seg in info.clip["segments"]:
        trace = f"{info.clip_id}/{STEP}/{seg['key']}"
        try:
            moves = tuple(dict.fromkeys(normalise_camera_move(m) for m in seg["moves"]))
        except ValueError as err:
            log.info("%s: skipped (%s)", trace, err)
            counts["unknown_move"] += 1
            continue
        if not moves:
            counts["no_move"] += 1
            continue
        a, b = seg["start_frame"], seg["end_frame"]

        def overlay(n: int, a=a, b=b) -> Path | None:
            out = info.paths.camera_overlays_dir / f"seg_{a}_to_{b}_f{n:04d}.jpg"
            return out if write_helper_image(info.frame_path(n), info.paths.mask_file("static", n), out) else None

        ends = [overlay(a), overlay(b)]
        if None in ends:
            counts["no_mask_at_ends"] += 1
            continue
        key_frames = {a: ends[0], b: ends[1]}
        if len(moves) > 1:
            inside = [n for n in range(a + 1, b) if info.paths.mask_file("static", n).is_file()]
            for n in sorted(rng.sample(inside, min(len(moves) - 1, 2, len(inside)))):
                path = overlay(n)
                if path is not None:
                    key_frames[n] = path
        numbers = sorted(key_frames)
        helpers = [key_frames[n] for n in numbers]
        if not verify_static(llm, f"{trace}/verify", label, helpers):
            counts["rejected_by_verifier"] += 1
            continue
        choice = camera_choice(moves, rng)
        t_a, t_b = info.time(a), info.time(b)
        question = rewrite_question(
            llm, f"{trace}/question",
            QUESTION_PROMPT.format(a=t_a, b=t_b, style=QUESTION_STYLES[len(items) % len(QUESTION_STYLES)]),
            FALLBACK_QUESTION.format(a=t_a, b=t_b))
        record = qa_record(info, f"{info.clip_id}_{seg['key']}", "camera", "camera_motion", question, choice, "",
                           helpers, info.segment(a, b))
        cot = request_cot(llm, args, info, f"{trace}/cot", "camera", record["question"], choice,
                          [(p, info.time(n)) for n, p in zip(numbers, helpers)],
                          context=f"The static reference object is: {label}.\n")
        if cot is None:
            counts["cot_failed"] += 1
            continue
        record["cot"] = cot
        items.append(record)
    counts["items"] = len(items)
    return items, counts


def run(args: QAArguments, llm_args: LLMArguments) -> int:
    return run_qa_step(STEP, "camera", camera_items, args, llm_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess camera_qa` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args(STEP, argv))
