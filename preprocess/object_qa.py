"""Step `object_qa`: object-motion multiple-choice items with an imagery chain of thought.

In:  OUT/clips/<id>/{clip.json, objects.json, frames/, masks_dynamic/} (clips the `masks` step completed)
Out: OUT/clips/<id>/masked_dynamic_overlays/dyn_f{frame:04d}.jpg (helper images)
     OUT/clips/<id>/object_qa.json (the clip's items, see preprocess.qa; [] when none)

Per clip (spec preprocess §8): up to 8 masked frames (first, last, evenly spaced ones between) are
highlighted; the LLM verifies which show the moving object (JSON; indices sorted, deduplicated,
range-checked; fewer than 2 -> no items) and describes it; it then judges the direction in the
camera frame after compensating camera motion and the change of distance (JSON with exact labels,
diagonals and compound distance changes included). Two distinct question types are drawn with
weights direct 0.32, bbox 0.45 (a box exists), distance 0.2, speed 0.03 (not stationary; the LLM
judges the speed profile, else another type is drawn). The bbox question cites the box of the
first kept mask in the pixel grid the model sees the frames in (the training-time frame fit).
Item id: <video_id>_dynamic_<type>.

    python -m preprocess object_qa --out data/engine --seed 0 --workers 8
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from dift.core.frames import fit_video_frames, load_frame_folder, uniform_subsample

from .arguments import LLMArguments, QAArguments, parse_step_args
from .labels import (
    DIRECTIONS,
    DISTANCES,
    SPEEDS,
    STATIONARY,
    canonical_direction,
    canonical_distance,
    canonical_speed,
    direction_options,
    distance_options,
    shuffled_choice,
    speed_options,
)
from .layout import clip_rng, frame_number
from .llm import ClipLLM, LLMReplyError, ReplyInvalid, image_part, require_fields, text_part
from .overlays import load_mask, mask_box, write_helper_image
from .qa import ClipInfo, qa_record, request_cot, rewrite_question, run_qa_step

log = logging.getLogger(__name__)
STEP = "object_qa"
MAX_KEY_FRAMES = 8
TYPE_WEIGHTS = {"direct": 0.32, "bbox": 0.45, "distance": 0.2, "speed": 0.03}
QUESTIONS_PER_CLIP = 2

FALLBACK_QUESTIONS = {
    "direct": ("In which direction does the {label} move from {a:g}s to {b:g}s, relative to the camera?",
               "How does the {label} move between {a:g}s and {b:g}s, after accounting for the camera's motion?"),
    "bbox": ("At {a:g}s the object at {box} starts moving. In which direction does it move until {b:g}s?",
             "Consider the object inside {box} at {a:g}s. What is its motion from {a:g}s to {b:g}s?"),
    "distance": ("How does the distance between the {label} and the camera change from {a:g}s to {b:g}s?",
                 "From {a:g}s to {b:g}s, does the {label} get closer to or farther from the camera?"),
    "speed": ("How does the speed of the {label} change from {a:g}s to {b:g}s?",
              "Which describes the {label}'s speed between {a:g}s and {b:g}s?"),
}
QUESTION_PROMPTS = {
    "direct": "asking in which direction the {label} moves from {a:g}s to {b:g}s, relative to the camera",
    "bbox": "about the object inside the box {box} (pixel coordinates x1,y1,x2,y2) at {a:g}s, asking in which "
            "direction it moves until {b:g}s; cite the box exactly and do not name the object",
    "distance": "asking how the distance between the {label} and the camera changes from {a:g}s to {b:g}s",
    "speed": "asking how the speed of the {label} changes from {a:g}s to {b:g}s",
}


def select_key_masks(mask_files: list[Path], limit: int = MAX_KEY_FRAMES) -> list[Path]:
    """All masks if at most max(4, limit); else first, last and limit - 2 evenly spaced interior ones.

    (The original's formula, min(limit, n) - 2 interior picks at round(step * (i + 1)), repeats a
    frame when n <= limit; every frame is kept then instead.)"""
    files = sorted(mask_files, key=lambda p: p.name)
    if len(files) <= max(4, limit):
        return files
    interior = files[1:-1]
    needed = min(limit, len(files)) - 2
    step = len(interior) / (needed + 1)
    picks = sorted({min(len(interior) - 1, round(step * (i + 1))) for i in range(needed)})
    return [files[0]] + [interior[i] for i in picks] + [files[-1]]


def draw_type(rng: random.Random, weights: dict[str, float]) -> str:
    """One key of `weights`, drawn with probability proportional to its weight."""
    names = list(weights)
    x = rng.random() * sum(weights.values())
    for name in names:
        x -= weights[name]
        if x < 0:
            return name
    return names[-1]


def _verification(obj: dict, n: int) -> tuple[bool, list[int], str]:
    require_fields(obj, "is_any_dynamic", "valid_frame_indices", "object_description")
    if not isinstance(obj["is_any_dynamic"], bool):
        raise ReplyInvalid("is_any_dynamic must be true or false")
    indices = obj["valid_frame_indices"]
    if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ReplyInvalid("valid_frame_indices must be a list of integers")
    description = obj["object_description"]
    if not isinstance(description, str):
        raise ReplyInvalid("object_description must be a string")
    # the original kept the list as given: unsorted, repeated, out of range
    return obj["is_any_dynamic"], sorted({i for i in indices if 0 <= i < n}), " ".join(description.split())


def _motion(obj: dict) -> tuple[str, str]:
    require_fields(obj, "direction", "distance")
    direction, distance = canonical_direction(str(obj["direction"])), canonical_distance(str(obj["distance"]))
    if direction is None:
        raise ReplyInvalid(f"direction {obj['direction']!r} is not one of the labels")
    if distance is None:
        raise ReplyInvalid(f"distance {obj['distance']!r} is not one of the labels")
    return direction, distance


def _speed(obj: dict) -> str:
    require_fields(obj, "speed")
    speed = canonical_speed(str(obj["speed"]))
    if speed is None:
        raise ReplyInvalid(f"speed {obj['speed']!r} is not one of the labels")
    return speed


def _json_list(labels) -> str:
    return ", ".join(f'"{x}"' for x in labels)


def model_grid_box(info: ClipInfo, mask_path: Path) -> str | None:
    """The mask's box as `[x1,y1,x2,y2]` in the pixel grid of the frames as the model is fed them
    (dift.core.frames' area cap, then qwen-vl-utils' video fit), rounded and clamped."""
    frame = load_frame_folder(info.paths.frames_dir)
    _, _, grid_h, grid_w = fit_video_frames(frame).shape
    width, height = info.clip["width"], info.clip["height"]
    box = mask_box(load_mask(mask_path, (width, height)))
    if box is None:
        return None
    sx, sy = grid_w / width, grid_h / height
    x1, y1, x2, y2 = box
    coords = [min(grid_w - 1, max(0, round(x1 * sx))), min(grid_h - 1, max(0, round(y1 * sy))),
              min(grid_w - 1, max(0, round((x2 + 1) * sx) - 1)), min(grid_h - 1, max(0, round((y2 + 1) * sy) - 1))]
    return "[" + ",".join(str(c) for c in coords) + "]"


def object_items(llm: ClipLLM, args: QAArguments, info: ClipInfo) -> tuple[list[dict], Counter]:
    counts: Counter = Counter()
    mask_dir = info.paths.mask_dir("dynamic")
    masks = sorted(mask_dir.glob("*.npy")) if mask_dir.is_dir() else []
    if not masks:
        counts["no_dynamic_mask"] += 1
        return [], counts
    label = info.objects.get("dynamic_object") or "moving object"
    trace = f"{info.clip_id}/{STEP}"
    overlays: list[tuple[int, Path, Path]] = []  # (frame number, helper image, mask)
    for mask in select_key_masks(masks):
        n = frame_number(mask)
        out = info.paths.dynamic_overlays_dir / f"dyn_f{n:04d}.jpg"
        if write_helper_image(info.frame_path(n), mask, out):
            overlays.append((n, out, mask))
    if len(overlays) < 2:
        counts["too_few_overlays"] += 1
        return [], counts

    verify = [image_part(p) for _, p, _ in overlays] + [text_part(
        f"These {len(overlays)} frames (0-based indices 0..{len(overlays) - 1}) highlight \"{label}\" in red. For each: is "
        "the highlighted object really moving, is it the same object in every frame, is the mask good? Answer with ONLY "
        'a JSON object: {"is_any_dynamic": true|false, "valid_frame_indices": [indices of good frames], '
        '"object_description": "a short description of the object"}')]
    try:
        dynamic, valid, description = llm.ask_json(verify, lambda o: _verification(o, len(overlays)), f"{trace}/verify")
    except LLMReplyError as err:
        log.info("%s: verification unusable (%s)", trace, err)
        counts["verification_failed"] += 1
        return [], counts
    if not dynamic or len(valid) < 2:
        counts["rejected_by_verifier"] += 1
        return [], counts
    kept = [overlays[i] for i in valid]
    label = description or label
    a, b = kept[0][0], kept[-1][0]
    helpers = [(p, info.time(n)) for n, p, _ in kept]
    segment = info.segment(a, b)
    t_a, t_b = info.time(a), info.time(b)

    camera = "; ".join(f"{s['start_time_s']:g}s-{s['end_time_s']:g}s: {', '.join(s['moves'])}" for s in info.clip["segments"])
    numbers = uniform_subsample(info.frame_numbers, args.cot_max_frames)
    motion_prompt = (
        f"You see {len(numbers)} frames of a video at {', '.join(f'{info.time(n):g}s' for n in numbers)}, then "
        f"{len(kept)} frames at {', '.join(f'{t:g}s' for _, t in helpers)} where \"{label}\" is highlighted in red.\n"
        f"Scene: {info.clip.get('scene_summary') or 'unknown'}\n"
        f"Camera motion, for reference only (this is NOT the object's movement): {camera or 'unknown'}\n"
        f"From {t_a:g}s to {t_b:g}s, what is the object's primary direction of motion in the camera's view, after "
        "compensating for the camera's own motion, and how does its distance to the camera change? Answer with ONLY a "
        f'JSON object: {{"direction": one of [{_json_list(DIRECTIONS)}], "distance": one of [{_json_list(DISTANCES)}]}}')
    content = [image_part(info.frame_path(n)) for n in numbers] + [image_part(p) for p, _ in helpers]
    try:
        direction, distance = llm.ask_json(content + [text_part(motion_prompt)], _motion, f"{trace}/direction")
    except LLMReplyError as err:
        log.info("%s: motion judgement unusable (%s)", trace, err)
        counts["direction_failed"] += 1
        return [], counts

    box = model_grid_box(info, kept[0][2])
    weights = {t: w for t, w in TYPE_WEIGHTS.items()
               if (t != "bbox" or box) and (t != "speed" or direction != STATIONARY)}
    rng = clip_rng(args.seed, info.clip_id, STEP)
    answers = {"direct": direction, "bbox": direction, "distance": distance}
    chosen: list[str] = []
    while len(chosen) < QUESTIONS_PER_CLIP and weights:
        qtype = draw_type(rng, weights)
        del weights[qtype]
        if qtype == "speed":
            speed_prompt = (f"From {t_a:g}s to {t_b:g}s, how does the speed of \"{label}\" change? Answer with ONLY a "
                            f'JSON object: {{"speed": one of [{_json_list(SPEEDS)}]}}')
            try:
                answers["speed"] = llm.ask_json(content + [text_part(speed_prompt)], _speed, f"{trace}/speed")
            except LLMReplyError as err:
                log.info("%s: speed judgement unusable, another type drawn (%s)", trace, err)
                continue
        chosen.append(qtype)

    option_builders = {"direct": direction_options, "bbox": direction_options, "distance": distance_options,
                       "speed": speed_options}
    items = []
    for qtype in chosen:
        correct = answers[qtype]
        choice = shuffled_choice(correct, option_builders[qtype](correct, rng), rng)
        fields = {"label": label, "a": t_a, "b": t_b, "box": box}
        fallback = rng.choice(FALLBACK_QUESTIONS[qtype]).format(**fields)
        question = rewrite_question(
            llm, f"{trace}/question_{qtype}",
            "Write a 1-2 sentence multiple-choice question " + QUESTION_PROMPTS[qtype].format(**fields)
            + ". Do not mention masks or highlights, and do not list options.", fallback)
        record = qa_record(info, f"{info.clip_id}_dynamic_{qtype}", "object", qtype, question, choice, "",
                           [p for p, _ in helpers], segment)
        cot = request_cot(llm, args, info, f"{trace}/cot_{qtype}", "object", record["question"], choice, helpers,
                          context=f"The object is: {label}. Camera motion (not the object's): {camera or 'unknown'}.\n")
        if cot is None:
            counts["cot_failed"] += 1
            continue
        record["cot"] = cot
        items.append(record)
    counts["items"] = len(items)
    return items, counts


def run(args: QAArguments, llm_args: LLMArguments) -> int:
    return run_qa_step(STEP, "object", object_items, args, llm_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess object_qa` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args(STEP, argv))
