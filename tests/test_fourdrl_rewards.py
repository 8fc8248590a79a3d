"""The 4DRL rewards (spec fourdrl.md section 4), table-driven, and the `--reward_funcs` registry."""

from __future__ import annotations

import pytest

from dift.core.extraction import RL_LETTERS, extract_answer
from fourdrl.rewards import REWARD_FUNCS, accuracy_reward, format_reward, resolve_reward_funcs

LATENT = "<|latent_start|><|latent_pad|><|latent_pad|><|latent_end|>"


@pytest.mark.parametrize("text, gt, reward", [
    ("<think>it moves left</think><answer>A</answer>", "A", 1.0),
    ("<think>it moves left</think><answer> a </answer>", "A", 0.0),  # lower case is no letter
    ("<think>x</think><ANSWER>The answer is C</ANSWER>", "c ", 1.0),  # tag case-insensitive, prefix removed, gt normalised
    ("<think>x</think><answer>\nE\n</answer>", "E", 1.0),  # RL accepts E and F
    ("Based on the clip, it moves right", "B", 1.0),  # no tag: the first capital A-F, even the B of "Based"
    ("Based on the clip, it moves right", "C", 0.0),
    (f"<think>{LATENT} the square goes up</think><answer>D</answer>", "D", 1.0),  # latent blocks do not disturb it
    ("<answer>none of these</answer> so C", "C", 1.0),  # empty tag result: the whole text is tried
    ("no letter here at all", "A", 0.0),
    ("<answer>A</answer>", "", 0.0),  # an empty ground truth is never hit
])
def test_accuracy_reward(text, gt, reward):
    assert accuracy_reward(completions=None, solution=[gt], completion_text=[text]) == [reward]


def test_accuracy_is_the_evaluations_extraction():
    import fourdrl.rewards

    assert fourdrl.rewards.extract_answer is extract_answer and fourdrl.rewards.RL_LETTERS == RL_LETTERS == "ABCDEF"


@pytest.mark.parametrize("text, reward", [
    ("<think>a</think><answer>B</answer>", 1.0),
    ("<think>a</think>\n  <answer>B</answer>", 1.0),  # white space between is allowed
    ("preamble <think>a\nb</think><answer>B</answer> trailing", 1.0),  # not anchored, spans lines
    (f"<think>I picture {LATENT}</think><answer>B</answer>", 1.0),  # spans a latent block
    (f"<think>a</think>{LATENT}<answer>B</answer>", 0.0),  # ...but nothing but white space between the two
    ("</think>a</think><answer>B</answer>", 0.0),  # the original RL suffix's typo shape
    ("<think>a</think>", 0.0),
    ("<answer>B</answer>", 0.0),
])
def test_format_reward(text, reward):
    assert format_reward(completions=None, completion_text=[text]) == [reward]


def test_rewards_read_trls_completions_without_the_rollout_text():
    conversational = [[{"role": "assistant", "content": "<think>x</think><answer>C</answer>"}]]
    assert accuracy_reward(completions=conversational, solution=["C"]) == [1.0]
    assert format_reward(completions=["<think>x</think><answer>C</answer>", "C"]) == [1.0, 0.0]
    # The rollout's text (special tokens kept) wins over TRL's decoding.
    assert format_reward(completions=["<think>x</think><answer>C</answer>"], completion_text=["C"]) == [0.0]


def test_registry_names_and_dotted_paths():
    assert resolve_reward_funcs(["accuracy", "format"]) == [accuracy_reward, format_reward]
    assert list(REWARD_FUNCS) == ["accuracy", "format"]
    assert resolve_reward_funcs(["fourdrl.rewards.format_reward"]) == [format_reward]
    with pytest.raises(ValueError, match=r"unknown reward function 'length'; valid: accuracy, format, or a dotted path"):
        resolve_reward_funcs(["accuracy", "length"])
    with pytest.raises(ValueError, match="unknown reward function 'no_such_module.f'"):
        resolve_reward_funcs(["no_such_module.f"])
    with pytest.raises(ValueError, match="at least one"):
        resolve_reward_funcs([])
