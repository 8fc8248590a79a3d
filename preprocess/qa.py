"""What the two QA steps (camera_qa, object_qa) share: the clip they read, the question rewrite,
the chain-of-thought request, the QA record, and the step's main loop.

QA record (one item; paths relative to the output root):
    id, clip_id, kind ("camera" | "object"), type, question (with the lettered options),
    question_text (without them), options {"A": text, ...}, correct_answer ("X. text"), answer ("X"),
    cot ("<thinking>...</thinking><answer>X. text</answer>"), mask_image_paths (helper images),
    original_image_paths (all clip frames), segment {start_frame, end_frame, start_time_s, end_time_s}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dift.core.cli import require_path
from dift.core.conversation import question_with_options
from dift.core.frames import uniform_subsample

from .arguments import LLMArguments, QAArguments
from .cot import SEPARATOR, cot_prompt, validate_cot
from .labels import Choice
from .layout import ClipPaths, write_json_atomic
from .llm import ClipLLM, LLMClient, LLMReplyError, ReplyInvalid, image_part, require_fields, text_part
from .records import read_clip_json, read_objects_json
from .runner import StepState, clips_completed_by, finish, run_step, select_clips, setup_logging

log = logging.getLogger(__name__)
MIN_QUESTION_CHARS = 10


@dataclass
class ClipInfo:
    """One clip as the QA steps see it."""

    paths: ClipPaths
    clip: dict  # clip.json
    objects: dict  # objects.json

    @classmethod
    def load(cls, out_root: Path, clip_id: str) -> ClipInfo:
        paths = ClipPaths(out_root, clip_id)
        return cls(paths, read_clip_json(paths.clip_json), read_objects_json(paths.objects_json))

    @property
    def clip_id(self) -> str:
        return self.paths.clip_id

    def frame_path(self, number: int) -> Path:
        return self.paths.frames_dir / self.clip["frames"][number]["file"]

    def time(self, number: int) -> float:
        return float(self.clip["frames"][number]["time_s"])

    @property
    def frame_numbers(self) -> list[int]:
        return list(range(len(self.clip["frames"])))

    def segment(self, start: int, end: int) -> dict:
        return {"start_frame": start, "end_frame": end, "start_time_s": self.time(start), "end_time_s": self.time(end)}


def _question_field(obj: dict) -> str:
    require_fields(obj, "question")
    q = obj["question"]
    if not isinstance(q, str):
        raise ReplyInvalid("question is not a string")
    return q


def rewrite_question(llm: ClipLLM, trace: str, prompt: str, fallback: str) -> str:
    """An LLM-written question (JSON {"question"}), used if longer than 10 characters once quotes
    are stripped; else `fallback`. A failing service is not hidden: LLMUnavailable propagates."""
    try:
        question = llm.ask_json([text_part(prompt + '\nAnswer with ONLY a JSON object: {"question": "..."}')],
                                _question_field, trace)
    except LLMReplyError as err:
        log.info("%s: fallback question (%s)", trace, err)
        return fallback
    question = " ".join(question.split()).strip("\"'“”")
    return question if len(question) > MIN_QUESTION_CHARS else fallback


def request_cot(llm: ClipLLM, args: QAArguments, info: ClipInfo, trace: str, flow: str, question: str,
                choice: Choice, helpers: list[tuple[Path, float]], context: str = "") -> str | None:
    """A validated CoT for one item, or None after `cot_tries` unusable replies."""
    numbers = uniform_subsample(info.frame_numbers, args.cot_max_frames)
    frame_times = [info.time(n) for n in numbers]
    content = [text_part(cot_prompt(flow, frame_times, [t for _, t in helpers], question, choice, context))]
    content += [image_part(info.frame_path(n)) for n in numbers]
    content.append(text_part(SEPARATOR.format(m=len(helpers))))
    content += [image_part(p) for p, _ in helpers]
    try:
        return llm.ask(content, lambda text: validate_cot(text, len(helpers), choice), trace,
                       tries=args.cot_tries, max_tokens=args.cot_max_tokens)
    except LLMReplyError as err:
        log.info("%s: item skipped (%s)", trace, err)
        return None


def qa_record(info: ClipInfo, item_id: str, kind: str, qtype: str, question_text: str, choice: Choice, cot: str,
              helpers: list[Path], segment: dict) -> dict:
    return {
        "id": item_id, "clip_id": info.clip_id, "kind": kind, "type": qtype,
        "question": question_with_options(question_text, choice.lines()), "question_text": question_text,
        "options": choice.as_dict(), "correct_answer": choice.correct_answer, "answer": choice.letter, "cot": cot,
        "mask_image_paths": [info.paths.rel(p) for p in helpers],
        "original_image_paths": [info.paths.rel(info.frame_path(n)) for n in info.frame_numbers],
        "segment": segment,
    }


def run_qa_step(step: str, kind: str, make_items, args: QAArguments, llm_args: LLMArguments) -> int:
    """A QA step's `run`: for every clip the masks step finished, `make_items(llm, args, info)` ->
    (items, counts); the items are written atomically to the clip's `<kind>_qa.json`."""
    setup_logging(args.log_level)
    require_path("--out", args.out, "dir")
    out_root = Path(args.out)
    llm = LLMClient(llm_args)
    clips = select_clips(clips_completed_by(out_root, "masks"), args, step, "masks", out_root)
    state = StepState(out_root, step)

    def process(clip_id: str) -> dict:
        info = ClipInfo.load(out_root, clip_id)
        clip_llm = llm.for_clip(state.replies_path(clip_id))
        items, counts = make_items(clip_llm, args, info)
        write_json_atomic(info.paths.qa_json(kind), items)
        if clip_llm.cache.hits:
            counts["llm_replies_reused"] += clip_llm.cache.hits
        return dict(counts)

    return finish(run_step(out_root, step, clips, process, args.workers, args.retry_failed), args.max_skip_fraction)
