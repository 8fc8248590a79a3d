"""Answer extraction: the spec's cases (table-driven, with traps) and equivalence of our simple rule
with a literal copy of the original's 5-step procedure (spec evaluation.md "Answer extraction")."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dift.core.extraction import (
    ANSWER_PREFIXES,
    EVAL_LETTERS,
    RL_LETTERS,
    extract_answer,
    normalize_gt,
    score_answer,
)

# Written out here, not imported, so a change to the module's list fails these tests.
SPEC_PREFIXES = ["The best answer is", "The correct answer is", "The answer is", "The answer",
                 "The best option is", "The correct option is", "Best answer:", "Best option:", "Answer:",
                 "Option:"]
SPEC_LATENT_TOKENS = ["<|latent_pad|>", "<|latent_start|>", "<|latent_end|>"]
BLOCK = "<|latent_start|>" + "<|latent_pad|>" * 4 + "<|latent_end|>"


def reference_extract(text: str, letters: str = "ABCD") -> str:
    """The original's procedure, step by step, redundant steps included (steps 2-5; step 1, the
    decoding, gives `text`)."""
    capital = f"[{letters}]"

    def steps_3_4(candidate: str) -> str:
        candidate = candidate.strip()
        for prefix in SPEC_PREFIXES:
            candidate = candidate.replace(prefix, "")
        if len(candidate.split()) > 10 and not re.search(capital, candidate):
            return ""
        found = re.search(capital, candidate)
        return found.group(0) if found else ""

    text = text.strip()
    tag = re.search(r"<answer>(.*?)</answer>", text, re.IGNORECASE | re.DOTALL)
    pred = steps_3_4(tag.group(1).strip() if tag else text)
    if not pred:
        pred = steps_3_4(text)
    if not pred:
        stripped = text
        for token in SPEC_LATENT_TOKENS:
            stripped = stripped.replace(token, " ")
        pred = steps_3_4(re.sub(r"\s+", " ", stripped).strip())
    return pred


CASES = [
    # (model text, letters, expected)
    ("<answer>B</answer>", EVAL_LETTERS, "B"),
    ("<think>Based on the motion the car turns.</think><answer> C </answer>", EVAL_LETTERS, "C"),
    ("<think>Based on the motion</think>", EVAL_LETTERS, "B"),  # the B of "Based", no tag
    ("Based on the video, the answer is C", EVAL_LETTERS, "B"),  # first capital wins, even in a word
    ("<ANSWER>\n  d\n</Answer>", EVAL_LETTERS, "A"),  # tag text has no capital: whole text, the A of ANSWER
    ("<Answer>\nD\n</ANSWER>", EVAL_LETTERS, "D"),  # tags are case-insensitive and span lines
    ("<answer>C</answer> and then <answer>D</answer>", EVAL_LETTERS, "C"),  # first pair
    ("<answer>x <answer>D</answer></answer>", EVAL_LETTERS, "D"),  # shortest match from the first open tag
    ("<answer>none of them</answer> so B", EVAL_LETTERS, "B"),  # empty tag prediction: retry on the whole text
    ("<answer>The answer is C</answer>", EVAL_LETTERS, "C"),
    ("The best answer is D", EVAL_LETTERS, "D"),
    ("The correct option is A.", EVAL_LETTERS, "A"),
    ("Answer: C", EVAL_LETTERS, "C"),  # the A of "Answer:" is removed with the prefix
    ("Answer: the red car", EVAL_LETTERS, ""),
    ("Best answer: c", EVAL_LETTERS, ""),  # the B of "Best answer:" is removed
    ("Best option: (D)", EVAL_LETTERS, "D"),
    ("Option: B", EVAL_LETTERS, "B"),
    ("The answers are A and C", EVAL_LETTERS, "A"),  # "The answer" removed, "s are A and C" left
    ("The answer isD", EVAL_LETTERS, "D"),
    ("THE ANSWER IS C", EVAL_LETTERS, "A"),  # prefixes are case-sensitive: the A of ANSWER
    ("the answer is b", EVAL_LETTERS, ""),  # lower-case letters never count
    ("E", EVAL_LETTERS, ""),
    ("E", RL_LETTERS, "E"),
    ("<answer>F. to the left</answer>", RL_LETTERS, "F"),
    ("<answer>F. to the left</answer>", EVAL_LETTERS, ""),  # whole text has no A-D either
    ("Best option: E", RL_LETTERS, "E"),
    ("the square moves to the left of the frame and then turns towards the top edge", EVAL_LETTERS, ""),
    ("the square moves to the left of the frame and then turns towards the top edge so C", EVAL_LETTERS, "C"),
    (f"<think>{BLOCK} the car moves {BLOCK}</think><answer> B </answer>", EVAL_LETTERS, "B"),
    (f"{BLOCK}<answer>{BLOCK}A</answer>", EVAL_LETTERS, "A"),
    (BLOCK * 3, EVAL_LETTERS, ""),  # latent tokens hold no capital letter
    ("", EVAL_LETTERS, ""),
    ("   \n ", EVAL_LETTERS, ""),
    ("<answer></answer>", EVAL_LETTERS, ""),
]


@pytest.mark.parametrize("text,letters,expected", CASES)
def test_extract_answer_cases(text, letters, expected):
    assert extract_answer(text, letters) == expected
    assert reference_extract(text, letters) == expected  # the cases are the original's behaviour


def test_prefix_list_is_the_spec_list():
    assert list(ANSWER_PREFIXES) == SPEC_PREFIXES


def test_bad_letters_rejected():
    with pytest.raises(ValueError, match="capital letters"):
        extract_answer("A", "abcd")


@pytest.mark.parametrize("answer,expected", [(" b ", "B"), ("C. left", "C"), ("d", "D"), ("", ""), (None, "")])
def test_normalize_gt(answer, expected):
    assert normalize_gt(answer) == expected


@pytest.mark.parametrize("pred,gt,hit", [("B", "B", 1), ("C", "B", 0), ("", "B", 0), ("", "", 0)])
def test_score_answer(pred, gt, hit):
    assert score_answer(pred, gt) == hit


# Fragments that make the redundant steps matter if they ever could: prefixes and pieces of them,
# tags, latent tokens, capitals in and out of words, white space runs, long word runs.
FRAGMENTS = [*SPEC_PREFIXES, *SPEC_LATENT_TOKENS, "<answer>", "</answer>", "<ANSWER>", "</Answer>", "The ",
             "answer", " is", "Best", "option", ":", "Based", "A", "B", "C", "D", "E", "F", "a", "b", "c", "d",
             " ", "  ", "\n", "\t", " \n ", "word ", "the square moves left ", "Option", "The best", "correct "]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join)


@settings(max_examples=1000, deadline=None)
@given(text=texts, letters=st.sampled_from([EVAL_LETTERS, RL_LETTERS]))
def test_simple_rule_equals_original_procedure(text, letters):
    assert extract_answer(text, letters) == reference_extract(text, letters)


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.sampled_from(["the", "square", "moves", "left", "right", BLOCK, "Best", "answer:",
                                       "Answer:", "C", "e"]), min_size=8, max_size=30),
       sep=st.sampled_from([" ", "  ", "\n", " " + BLOCK + " "]))
def test_equivalence_on_long_texts(words, sep):
    text = sep.join(words)
    for letters in (EVAL_LETTERS, RL_LETTERS):
        assert extract_answer(text, letters) == reference_extract(text, letters)
        wrapped = f"<think>{text}</think><answer>{text}</answer>"
        assert extract_answer(wrapped, letters) == reference_extract(wrapped, letters)
