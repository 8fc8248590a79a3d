"""The 4DRL reward functions (spec fourdrl.md section 4), plain functions on TRL's reward contract:
keyword arguments `completions` (and every dataset column, e.g. `solution`), one float per completion.

The text they read is `completion_text` when the rollout provides it (`fourdrl.trainer`: the
generated ids decoded with special tokens kept, cut at the first `<|im_end|>`: exactly the text
DSR evaluation scores), else TRL's decoded `completions`.

    >>> accuracy_reward(completions=None, solution=["B"], completion_text=["<think>...</think><answer> B </answer>"])
    [1.0]
    >>> format_reward(completions=["<think>a</think> <answer>C</answer>"])
    [1.0]
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence

from dift.core.extraction import RL_LETTERS, extract_answer, normalize_gt, score_answer

# The shape the output-format suffix asks for, anywhere in the text (not anchored; `.` spans new lines
# and latent blocks, which are not removed): <think>, shortest text, </think>, optional white space,
# <answer>, shortest text, </answer>.
FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def completion_texts(completions, completion_text: Sequence[str] | None = None) -> list[str]:
    """The text of each completion: the rollout's `completion_text` if given, else TRL's
    `completions` (strings, or conversational message lists whose last message holds the text)."""
    if completion_text is not None:
        return list(completion_text)
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def accuracy_reward(completions, solution: Sequence[str], completion_text: Sequence[str] | None = None,
                    **kwargs) -> list[float]:
    """1.0 if the answer extracted with the evaluation's rule (letters A-F) is the solution's letter, else 0.0."""
    texts = completion_texts(completions, completion_text)
    return [float(score_answer(extract_answer(text, letters=RL_LETTERS), normalize_gt(gt)))
            for text, gt in zip(texts, solution, strict=True)]


def format_reward(completions, completion_text: Sequence[str] | None = None, **kwargs) -> list[float]:
    """1.0 if the completion contains <think>...</think> followed by <answer>...</answer>, else 0.0."""
    return [1.0 if FORMAT_RE.search(text) else 0.0 for text in completion_texts(completions, completion_text)]


# `--reward_funcs` names (the original's), in the order the launcher passes them.
REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
}


def resolve_reward_funcs(names: Sequence[str]) -> list[Callable[..., list[float]]]:
    """The reward functions named by `--reward_funcs`: registry names, or dotted paths to a function on
    TRL's contract (`my_package.my_rewards.length_reward`). An unknown name lists the valid ones."""
    if not names:
        raise ValueError(f"--reward_funcs needs at least one of: {', '.join(REWARD_FUNCS)}")
    return [_reward_func(name) for name in names]


def _reward_func(name: str) -> Callable[..., list[float]]:
    if name in REWARD_FUNCS:
        return REWARD_FUNCS[name]
    module_name, _, attr = name.rpartition(".")
    func = None
    if module_name:
        try:
            func = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            func = None
    if not callable(func):
        raise ValueError(f"unknown reward function {name!r}; valid: {', '.join(REWARD_FUNCS)}, "
                         "or a dotted path module.function")
    return func
