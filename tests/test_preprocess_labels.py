"""Answer vocabularies, option sets, question-type draws and CoT validation of the data engine."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

import pytest

from preprocess.check import record_problem
from preprocess.cot import structure_problem, validate_cot
from preprocess.labels import (
    CAMERA_MOVES,
    DIRECTIONS,
    DISTANCE_COMPOUND,
    DISTANCES,
    SPEEDS,
    camera_choice,
    camera_moves_text,
    direction_options,
    distance_options,
    normalise_camera_move,
    opposite_camera_move,
    opposite_direction,
    shuffled_choice,
    speed_options,
)
from preprocess.layout import append_line, clip_rng, frame_number, read_complete_lines
from preprocess.llm import ReplyInvalid, extract_json
from preprocess.object_qa import TYPE_WEIGHTS, _motion, _speed, _verification, draw_type, select_key_masks


def _assert_choice(choice, correct):
    assert len(choice.options) == 4 and len(set(choice.options)) == 4
    assert choice.correct_text == correct and choice.options[choice.correct_index] == correct
    assert choice.correct_answer == f"{choice.letter}. {correct}"


def test_camera_moves_normalise_and_flip():
    assert normalise_camera_move("Roll CW") == "Roll Clockwise"
    assert normalise_camera_move("roll  ccw") == "Roll Counter-Clockwise"
    assert normalise_camera_move("pan left") == "Pan Left"
    with pytest.raises(ValueError, match="unknown camera move 'Zoom In'"):
        normalise_camera_move("Zoom In")
    assert opposite_camera_move("Dolly In") == "Dolly Out"
    assert opposite_camera_move("Roll Counter-Clockwise") == "Roll Clockwise"
    assert opposite_camera_move("Stay") == "Stay"
    assert camera_moves_text(["Pan Left", "Dolly In", "Tilt Up"]) == "Pan Left, Dolly In and Tilt Up"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_camera_options_four_distinct_sets_with_the_correct_one(k):
    movable = [m for m in CAMERA_MOVES if m != "Stay"]
    combos = [c for c in itertools.permutations(movable, k) if not any(opposite_camera_move(m) in c for m in c)]
    rng = random.Random(0)
    for moves in (combos if k == 1 else rng.sample(combos, 60)) + ([("Stay",)] if k == 1 else []):
        choice = camera_choice(moves, random.Random(hash(moves) & 0xFFFF))
        _assert_choice(choice, camera_moves_text(moves))
        sets = [frozenset(o.replace(", ", " and ").split(" and ")) for o in choice.options]
        assert len(set(sets)) == 4  # no option is the same moves in another order
    # everything flipped is the first distractor when it differs
    assert "Pan Left and Dolly Out" in camera_choice(("Pan Right", "Dolly In"), random.Random(1)).options


def test_direction_options_every_label_including_diagonals():
    for label in DIRECTIONS:
        for seed in range(5):
            options = direction_options(label, random.Random(seed))
            _assert_choice(shuffled_choice(label, options, random.Random(seed)), label)
            if opposite_direction(label):
                assert opposite_direction(label) in options
    assert set(direction_options("Moving Left", random.Random(0))) >= {"Moving Right", "Moving Left-Up", "Moving Left-Down"}
    assert set(direction_options("Moving Right-Up", random.Random(0))) >= {"Moving Left-Down", "Moving Right", "Moving Up"}


def test_distance_and_speed_options_every_label_including_compounds():
    for label in DISTANCES:
        options = distance_options(label, random.Random(0))
        _assert_choice(shuffled_choice(label, options, random.Random(0)), label)
        assert sum(o in DISTANCE_COMPOUND for o in options) == 1
    for label in SPEEDS:
        _assert_choice(shuffled_choice(label, speed_options(label, random.Random(0)), random.Random(0)), label)


def test_exact_labels_from_json_never_substrings():
    # the original's substring search turned "Moving Left-Up" into "Moving Left" and a compound speed
    # into "Speeding Up"; every label must come back exactly
    for label in DIRECTIONS:
        for distance in DISTANCES:
            assert _motion({"direction": label.upper(), "distance": distance}) == (label, distance)
    for label in SPEEDS:
        assert _speed({"speed": f" {label.lower()} "}) == label
    with pytest.raises(ReplyInvalid, match="not one of the labels"):
        _motion({"direction": "The object is Moving Left", "distance": DISTANCES[0]})
    with pytest.raises(ReplyInvalid, match="missing field"):
        _speed({"velocity": "fast"})


def test_verification_indices_sorted_unique_in_range():
    ok, valid, desc = _verification({"is_any_dynamic": True, "valid_frame_indices": [3, 1, 1, 7, -1],
                                     "object_description": " red  car "}, n=4)
    assert ok and valid == [1, 3] and desc == "red car"
    with pytest.raises(ReplyInvalid):
        _verification({"is_any_dynamic": "yes", "valid_frame_indices": [], "object_description": ""}, n=4)


def test_question_type_draw_reaches_every_type_with_its_weight():
    rng = random.Random(0)
    counts = Counter(draw_type(rng, TYPE_WEIGHTS) for _ in range(20000))
    assert set(counts) == set(TYPE_WEIGHTS)
    for name, weight in TYPE_WEIGHTS.items():
        assert abs(counts[name] / 20000 - weight) < 0.02


def test_select_key_masks():
    files = [Path(f"frame_{i:04d}.npy") for i in range(20)]
    assert select_key_masks(files[:4]) == files[:4]
    for n in range(5, 9):  # up to 8 masks: every one, none repeated or lost
        assert select_key_masks(list(reversed(files[:n]))) == files[:n]
    picked = select_key_masks(list(reversed(files)))
    assert len(picked) == 8 and picked[0] == files[0] and picked[-1] == files[-1]
    assert picked == sorted(picked) and len(set(picked)) == 8
    assert frame_number("frame_0012_mask.npy") == 12 and frame_number("x/frame_0003.jpg") == 3


def _cot(letter="B", text="Moving Left", tags=2, pad="x" * 120):
    inner = f"{pad} from " + " to ".join(["<output_image>"] * tags) + " the object moves."
    return f"<thinking>{inner}</thinking><answer>{letter}. {text}</answer>"


def test_cot_validation_checks_the_answer_letter():
    choice = shuffled_choice("Moving Left", ["Moving Left", "Moving Right", "Moving Up", "Moving Down"], random.Random(3))
    good = _cot(choice.letter, "Moving Left")
    assert validate_cot(good, 2, choice).endswith(f"<answer>{choice.correct_answer}</answer>")
    assert validate_cot(f"```\n{good}\n```", 2, choice)
    wrong = "ABCD"[(choice.correct_index + 1) % 4]
    for bad, why in [
        (_cot(wrong, choice.options["ABCD".index(wrong)]), "not the correct option"),
        (_cot(choice.letter, "Moving Right"), "not the correct option"),  # right letter, wrong text
        (_cot(choice.letter, "Moving Left", tags=3), "3 <output_image> for 2"),
        (_cot(choice.letter, "Moving Left", pad="short"), "fewer than 100"),
        (good + " <output_image>", "text outside"),
        (good.replace("</thinking>", "</thinking><output_image>"), "text outside"),
        (good.replace("<answer>", "<answer><answer>"), "appears 2 times"),
        (_cot(choice.letter, "Moving Left", pad="y" * 120).replace(" to <output_image>", " " + "z" * 400 + " <output_image>"),
         "spread over"),
    ]:
        with pytest.raises(ReplyInvalid, match=why):
            validate_cot(bad, 2, choice)


def test_structure_problem_for_dift_records(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x")
    rec = {"id": "1", "image_input": ["a.jpg"], "image_output": ["a.jpg"], "text_input": "Q?",
           "text_output": "<think>see <output_image></think><answer>A</answer>"}
    assert record_problem(rec, tmp_path) is None
    assert "2 <output_image> for 1" in record_problem({**rec, "text_output": rec["text_output"].replace(
        "see", "see <output_image>")}, tmp_path)
    assert "not found" in record_problem({**rec, "image_input": ["missing.jpg"]}, tmp_path)
    assert structure_problem("<thinking>a</thinking><answer>A</answer>", 0) is None


def test_extract_json_and_torn_lines(tmp_path):
    assert extract_json('Here:\n```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ReplyInvalid):
        extract_json("no json here")
    log = tmp_path / "completed.txt"
    append_line(log, "a")
    with open(log, "a") as fh:
        fh.write("tor")  # a writer killed mid-line
    assert read_complete_lines(log) == ["a"]
    append_line(log, "b")
    assert log.read_text() == "a\nb\n"


def test_clip_rng_depends_only_on_seed_clip_and_purpose():
    assert clip_rng(0, "c1", "qa").random() == clip_rng(0, "c1", "qa").random()
    draws = {clip_rng(s, c, p).random() for s, c, p in [(0, "c1", "qa"), (1, "c1", "qa"), (0, "c2", "qa"), (0, "c1", "x")]}
    assert len(draws) == 4
