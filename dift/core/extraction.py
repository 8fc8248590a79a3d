"""Answer extraction and scoring of multiple-choice outputs: THE rule, shared by DSR evaluation and
the RL accuracy reward (so the reward the policy is trained on is exactly the metric it is judged by).

The original's procedure (spec evaluation.md "Answer extraction", fourdrl.md section 4) on the model
text (decoded with special tokens kept, cut at the first `<|im_end|>`, stripped; see
`dift.core.generation.decode_answer_text`):

1. take the inner text of the first `<answer>...</answer>` (case-insensitive, across lines,
   shortest match), stripped; else the whole text;
2. remove every occurrence of each of `ANSWER_PREFIXES`, in that order (literal, case-sensitive);
3. the prediction is the first allowed capital letter anywhere in what is left (even inside a
   word: the B of "Based");
4. if there is none, repeat 2-3 on the whole text.

The original also has a 10-word rule and a third try with the latent tokens replaced by spaces;
neither can change the result (tests/test_eval_extraction.py proves it against a literal copy of
the 5-step procedure), so they are not implemented here.

    >>> extract_answer("<think>Based on the motion...</think><answer> C </answer>")
    'C'
    >>> extract_answer("The answer is E", letters=RL_LETTERS)
    'E'
"""

from __future__ import annotations

import re

EVAL_LETTERS = "ABCD"  # DSR evaluation: four options
RL_LETTERS = "ABCDEF"  # the RL accuracy reward accepts up to six

# Removed wherever they occur, in this order (order matters: "The answer is" before "The answer").
ANSWER_PREFIXES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
    "Answer:",
    "Option:",
)

ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def answer_tag_text(text: str) -> str | None:
    """The stripped inner text of the first `<answer>...</answer>` pair, or None if there is none."""
    match = ANSWER_TAG_RE.search(text)
    return match.group(1).strip() if match else None


def remove_answer_prefixes(text: str) -> str:
    """`text` stripped, with every occurrence of each answer prefix removed, prefix by prefix."""
    text = text.strip()
    for prefix in ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    return text


def check_letters(letters: str) -> str:
    """`letters` if it is a non-empty string of capital letters, else a ValueError."""
    if not letters or not all("A" <= c <= "Z" for c in letters):
        raise ValueError(f"letters must be capital letters A-Z, got {letters!r}")
    return letters


def first_choice_letter(text: str, letters: str = EVAL_LETTERS) -> str:
    """The first character of `text` that is one of `letters`, or "" if none is."""
    allowed = set(check_letters(letters))
    return next((c for c in text if c in allowed), "")


def extract_answer(text: str, letters: str = EVAL_LETTERS) -> str:
    """The predicted option letter of a model output ("" if none): the first allowed capital letter
    after prefix removal in the `<answer>` text, else in the whole text."""
    text = (text or "").strip()
    tagged = answer_tag_text(text)
    if tagged is not None:
        pred = first_choice_letter(remove_answer_prefixes(tagged), letters)
        if pred:
            return pred
    return first_choice_letter(remove_answer_prefixes(text), letters)


def normalize_gt(answer) -> str:
    """The ground-truth letter of a benchmark answer / RL solution: stripped, upper-cased, first
    character ("" if empty)."""
    return str(answer if answer is not None else "").strip().upper()[:1]


def score_answer(pred: str, gt: str) -> int:
    """1 if the prediction equals the ground-truth letter, else 0 (an empty gt is never hit)."""
    return int(bool(gt) and pred == gt)
