"""The chain of thought (CoT): its prompt, its validation, and the tag structure checks shared by
the QA steps (`<thinking>` tags, as the LLM writes them) and `check` (`<think>`, after convert).

A CoT is accepted (spec preprocess §9, with the original's holes closed) when:
- it is `<thinking>...</thinking><answer>...</answer>`, each tag exactly once, in that order, with
  nothing but white space around it;
- the thinking text has at least 100 characters and exactly M `<output_image>` placeholders
  (M = helper images), none outside it, and the first-to-last placeholder span is at most 150 x M;
- the answer is the correct option: its letter (the original never checked it), and its text if
  one is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dift.core.conversation import count_output_images
from dift.core.tokens import OUTPUT_IMAGE_PLACEHOLDER

from .labels import Choice
from .llm import ReplyInvalid

MIN_THINKING_CHARS = 100
MAX_SPAN_PER_IMAGE = 150
SEPARATOR = ("--- The following {m} images are Masked Frames (your mental imagery, use <output_image> for "
             "each): ---")
_ANSWER = re.compile(r"^\(?([A-Da-d])\)?(?:\s*[.:)]\s*(.*?))?\s*\.?$", re.S)


def structure_problem(text: str, num_images: int, think_tag: str = "thinking") -> str | None:
    """Why `text` is not `<T>...</T><answer>...</answer>` with exactly `num_images` placeholders,
    all inside the reasoning; None if it is fine. `think_tag` is 'thinking' (LLM) or 'think' (DIFT)."""
    if not isinstance(text, str):
        return "not a string"
    open_t, close_t = f"<{think_tag}>", f"</{think_tag}>"
    for tag in (open_t, close_t, "<answer>", "</answer>"):
        if text.count(tag) != 1:
            return f"{tag} appears {text.count(tag)} times"
    i0, i1, i2, i3 = (text.index(t) for t in (open_t, close_t, "<answer>", "</answer>"))
    if not i0 < i1 < i2 < i3:
        return "tags out of order"
    if text[:i0].strip() or text[i1 + len(close_t):i2].strip() or text[i3 + len("</answer>"):].strip():
        return "text outside the tags"
    thinking = text[i0 + len(open_t):i1]
    total, inside = count_output_images(text), count_output_images(thinking)
    if total != inside:
        return f"{total - inside} {OUTPUT_IMAGE_PLACEHOLDER} outside the reasoning"
    if inside != num_images:
        return f"{inside} {OUTPUT_IMAGE_PLACEHOLDER} for {num_images} helper images"
    if not text[i2 + len("<answer>"):i3].strip():
        return "empty answer"
    return None


def answer_text(text: str) -> str:
    """The text between <answer> and </answer> (stripped)."""
    return text.split("<answer>", 1)[1].split("</answer>", 1)[0].strip()


def answer_letter(answer: str, choice: Choice) -> str | None:
    """The option letter an answer names ('B', 'B.', '(B) text', 'B. text'), if its text (when given)
    is that option's; else None."""
    m = _ANSWER.match(answer.strip())
    if not m:
        return None
    letter = m.group(1).upper()
    text = (m.group(2) or "").strip().rstrip(".").lower()
    index = "ABCD".index(letter)
    if index >= len(choice.options):
        return None
    if text and text != choice.options[index].lower().rstrip("."):
        return None
    return letter


def validate_cot(text: str, num_images: int, choice: Choice) -> str:
    """The accepted CoT, normalised to `<thinking>...</thinking><answer>X. text</answer>`;
    ReplyInvalid with the reason otherwise (the caller asks the LLM again)."""
    text = (text or "").strip()
    fence = re.fullmatch(r"```\w*\s*(.*?)\s*```", text, flags=re.S)
    text = fence.group(1) if fence else text
    problem = structure_problem(text, num_images, "thinking")
    if problem:
        raise ReplyInvalid(f"CoT: {problem}")
    thinking = text.split("<thinking>", 1)[1].split("</thinking>", 1)[0]
    if len(thinking.strip()) < MIN_THINKING_CHARS:
        raise ReplyInvalid(f"CoT: thinking has {len(thinking.strip())} characters, fewer than {MIN_THINKING_CHARS}")
    first, last = thinking.find(OUTPUT_IMAGE_PLACEHOLDER), thinking.rfind(OUTPUT_IMAGE_PLACEHOLDER)
    if num_images and last - first > MAX_SPAN_PER_IMAGE * num_images:
        raise ReplyInvalid(f"CoT: placeholders spread over {last - first} characters (max {MAX_SPAN_PER_IMAGE * num_images})")
    letter = answer_letter(answer_text(text), choice)
    if letter != choice.letter:
        raise ReplyInvalid(f"CoT: answer {answer_text(text)[:40]!r} is not the correct option {choice.correct_answer!r}")
    return f"<thinking>{thinking.strip()}</thinking><answer>{choice.correct_answer}</answer>"


def _times(times: Sequence[float]) -> str:
    return ", ".join(f"{t:g}s" for t in times)


CAMERA_FLOW = ("locate the time segment; describe the scene; pick the static reference object; visualise it "
               "with the masked frames; reason about how its pixels shift between them; match the shift to an option")
OBJECT_FLOW = ("describe the scene; locate the time segment; track the object; visualise it with the masked "
               "frames; reason about its change in position and size; compensate for the camera's own motion; conclude")
EXAMPLE = (
    "<thinking>The question is about the camera between 2.0s and 6.0s. The scene is a street with a parked white "
    "van on the right. I picture the van from <output_image> to <output_image>: it slides from the right third "
    "towards the centre of the frame while its size barely changes, so the view turns right rather than moving "
    "forward. That matches a pan to the right.</thinking><answer>A. Pan Right</answer>"
)


def cot_prompt(flow: str, frame_times: Sequence[float], helper_times: Sequence[float], question: str,
               choice: Choice, context: str = "") -> str:
    """The instructions of a CoT request (followed by the frames, the separator, the helper images)."""
    steps = CAMERA_FLOW if flow == "camera" else OBJECT_FLOW
    m = len(helper_times)
    return (
        f"You see {len(frame_times)} frames of a video, at {_times(frame_times)} (from {frame_times[0]:g}s to "
        f"{frame_times[-1]:g}s), then {m} masked frames (the relevant region highlighted in red) at {_times(helper_times)}.\n"
        f"{context}"
        f"Question:\n{question}\n\nThe correct answer is {choice.correct_answer}.\n\n"
        "Write the reasoning that a model watching this video would follow to reach exactly this answer. The masked "
        f"frames are its own mental imagery: write exactly {m} {OUTPUT_IMAGE_PLACEHOLDER} tags, one per masked frame, "
        "in time order, together in ONE sentence (\"from <output_image> to <output_image> ...\"), never repeated, "
        f"all inside the thinking. Follow these steps: {steps}. Refer to times in seconds.\n"
        "Output ONLY <thinking>...</thinking><answer>X. option text</answer>. Example:\n" + EXAMPLE
    )
