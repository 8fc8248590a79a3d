"""Every answer vocabulary of the engine and the one place options are built from it.

Camera moves (SpatialVID's names), object directions, distance changes, speed profiles: their
exact strings, opposites, related labels, the option sets (4 distinct options, the correct one
among them, shuffled with the clip's own RNG) and the lettered text "A. ..." of a question.
Labels are matched exactly (case and spacing aside), never as substrings: "Moving Left" must
not swallow "Moving Left-Up", nor "Speeding Up" "First Speeding Up Then Slowing Down".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

LETTERS = "ABCD"

# --------------------------------------------------------------------------------------------
# Camera moves

CAMERA_MOVES: tuple[str, ...] = (
    "Pan Left", "Pan Right", "Tilt Up", "Tilt Down", "Dolly In", "Dolly Out", "Truck Left", "Truck Right",
    "Pedestal Up", "Pedestal Down", "Roll Clockwise", "Roll Counter-Clockwise", "Stay",
)
_CAMERA_ALIASES = {"roll cw": "Roll Clockwise", "roll ccw": "Roll Counter-Clockwise"}
_OPPOSITE_WORDS = {"Left": "Right", "Right": "Left", "Up": "Down", "Down": "Up", "In": "Out", "Out": "In",
                   "Clockwise": "Counter-Clockwise", "Counter-Clockwise": "Clockwise"}


def _canonical(label: str, vocabulary: Sequence[str], aliases: dict[str, str] | None = None) -> str | None:
    key = " ".join(str(label).split()).lower()
    if aliases and key in aliases:
        return aliases[key]
    for name in vocabulary:
        if name.lower() == key:
            return name
    return None


def normalise_camera_move(move: str) -> str:
    """SpatialVID's move name as used in questions (`Roll CW` -> `Roll Clockwise`); unknown -> ValueError."""
    name = _canonical(move, CAMERA_MOVES, _CAMERA_ALIASES)
    if name is None:
        raise ValueError(f"unknown camera move {move!r} (expected one of {', '.join(CAMERA_MOVES)}, Roll CW, Roll CCW)")
    return name


def opposite_camera_move(move: str) -> str:
    """Left<->Right, Up<->Down, In<->Out, Clockwise<->Counter-Clockwise; `Stay` is its own opposite."""
    kind, _, direction = move.partition(" ")
    return f"{kind} {_OPPOSITE_WORDS[direction]}" if direction in _OPPOSITE_WORDS else move


def camera_moves_text(moves: Sequence[str]) -> str:
    """`X` / `X and Y` / `X, Y and Z`."""
    moves = list(moves)
    if len(moves) <= 1:
        return "".join(moves)
    return ", ".join(moves[:-1]) + " and " + moves[-1]


def _valid_combo(moves: Sequence[str]) -> bool:
    """No repeats, no move together with its opposite, `Stay` only alone."""
    if len(set(moves)) != len(moves):
        return False
    if len(moves) > 1 and "Stay" in moves:
        return False
    return not any(opposite_camera_move(m) in moves and opposite_camera_move(m) != m for m in moves)


def camera_distractors(correct: Sequence[str], rng: random.Random) -> list[tuple[str, ...]]:
    """Three wrong move sets for a segment whose true moves are `correct` (spec preprocess §7.5):
    everything flipped; for several moves, each one flipped in turn (or swapped for a random other
    move); then random other moves (for several, 40% a same-size combination). No set repeats."""
    correct = tuple(correct)
    seen = {frozenset(correct)}
    out: list[tuple[str, ...]] = []

    def add(candidate: Sequence[str]) -> None:
        candidate = tuple(candidate)
        if len(out) < 3 and _valid_combo(candidate) and frozenset(candidate) not in seen:
            seen.add(frozenset(candidate))
            out.append(candidate)

    add(opposite_camera_move(m) for m in correct)
    others = [m for m in CAMERA_MOVES if m not in correct]
    if len(correct) > 1:
        for i, move in enumerate(correct):
            flipped = opposite_camera_move(move)
            replacement = flipped if flipped != move else rng.choice(others)
            add(correct[:i] + (replacement,) + correct[i + 1:])
    pool = others[:]
    rng.shuffle(pool)
    movable = [m for m in CAMERA_MOVES if m != "Stay"]
    for _ in range(200):  # bounded: the vocabulary is far larger than three sets
        if len(out) == 3:
            break
        if len(correct) > 1 and rng.random() < 0.4:
            add(rng.sample(movable, len(correct)))
        elif pool:
            add((pool.pop(),))
        else:
            add((rng.choice(movable),))
    if len(out) < 3:
        raise RuntimeError(f"could not build 3 distractors for {correct}")
    return out


# --------------------------------------------------------------------------------------------
# Object motion

STATIONARY = "Stationary"
DIRECTIONS: tuple[str, ...] = (
    "Moving Left", "Moving Right", "Moving Up", "Moving Down", "Moving Left-Up", "Moving Left-Down",
    "Moving Right-Up", "Moving Right-Down", "Moving Toward Camera", "Moving Away from Camera", STATIONARY,
)
_DIR_OPPOSITE = {
    "Left": "Right", "Right": "Left", "Up": "Down", "Down": "Up", "Left-Up": "Right-Down", "Right-Down": "Left-Up",
    "Left-Down": "Right-Up", "Right-Up": "Left-Down", "Toward Camera": "Away from Camera",
    "Away from Camera": "Toward Camera",
}
_DIR_RELATED = {
    "Left": ("Left-Up", "Left-Down"), "Right": ("Right-Up", "Right-Down"),
    "Up": ("Left-Up", "Right-Up"), "Down": ("Left-Down", "Right-Down"),
    "Left-Up": ("Left", "Up"), "Left-Down": ("Left", "Down"), "Right-Up": ("Right", "Up"),
    "Right-Down": ("Right", "Down"), "Toward Camera": ("Down", "Up"), "Away from Camera": ("Down", "Up"),
}

CLOSER, FARTHER, SAME_DISTANCE = ("Getting Closer to Camera", "Getting Farther from Camera",
                                  "Maintaining Roughly the Same Distance")
DISTANCE_BASIC: tuple[str, ...] = (CLOSER, FARTHER, SAME_DISTANCE)
DISTANCE_COMPOUND: tuple[str, ...] = ("First Getting Closer, Then Farther", "First Getting Farther, Then Closer")
DISTANCES: tuple[str, ...] = DISTANCE_BASIC + DISTANCE_COMPOUND

SPEEDS: tuple[str, ...] = (
    "Speeding Up", "Slowing Down", "Maintaining a Constant Speed", "First Speeding Up Then Slowing Down",
    "First Slowing Down Then Speeding Up", "Moving at Varying Speeds",
)


def canonical_direction(label: str) -> str | None:
    """The exact direction label `label` names (case/spacing aside), else None."""
    return _canonical(label, DIRECTIONS)


def canonical_distance(label: str) -> str | None:
    return _canonical(label, DISTANCES)


def canonical_speed(label: str) -> str | None:
    return _canonical(label, SPEEDS)


def opposite_direction(label: str) -> str | None:
    core = label.removeprefix("Moving ")
    return f"Moving {_DIR_OPPOSITE[core]}" if core in _DIR_OPPOSITE else None


def related_directions(label: str) -> tuple[str, ...]:
    if label == STATIONARY:
        return ("Moving Left", "Moving Right")
    return tuple(f"Moving {r}" for r in _DIR_RELATED[label.removeprefix("Moving ")])


def distance_for_direction(direction: str) -> str:
    """The original's rule (used when no distance judgement is available): toward -> closer,
    away -> farther, anything else -> same distance."""
    if direction == "Moving Toward Camera":
        return CLOSER
    if direction == "Moving Away from Camera":
        return FARTHER
    return SAME_DISTANCE


def _fill(first: Sequence[str], vocabulary: Sequence[str], rng: random.Random) -> list[str]:
    options = list(dict.fromkeys(x for x in first if x))[:4]
    rest = [x for x in vocabulary if x not in options]
    rng.shuffle(rest)
    return options + rest[: 4 - len(options)]


def direction_options(correct: str, rng: random.Random) -> list[str]:
    """Correct, its opposite, two related directions, random fill (4 distinct, unshuffled)."""
    return _fill([correct, opposite_direction(correct), *related_directions(correct)], DIRECTIONS, rng)


def distance_options(correct: str, rng: random.Random) -> list[str]:
    """The three basic distance changes plus one compound (the correct one if it is compound)."""
    compound = correct if correct in DISTANCE_COMPOUND else rng.choice(DISTANCE_COMPOUND)
    return [correct] + [d for d in (*DISTANCE_BASIC, compound) if d != correct]


def speed_options(correct: str, rng: random.Random) -> list[str]:
    return [correct] + rng.sample([s for s in SPEEDS if s != correct], 3)


# --------------------------------------------------------------------------------------------
# Lettered multiple choice


@dataclass(frozen=True)
class Choice:
    """A shuffled multiple-choice question's options and its correct letter."""

    options: tuple[str, ...]  # option texts in letter order
    correct_index: int

    @property
    def letter(self) -> str:
        return LETTERS[self.correct_index]

    @property
    def correct_text(self) -> str:
        return self.options[self.correct_index]

    @property
    def correct_answer(self) -> str:
        return f"{self.letter}. {self.correct_text}"

    def lines(self) -> list[str]:
        return [f"{LETTERS[i]}. {text}" for i, text in enumerate(self.options)]

    def as_dict(self) -> dict[str, str]:
        return {LETTERS[i]: text for i, text in enumerate(self.options)}


def shuffled_choice(correct: str, options: Sequence[str], rng: random.Random) -> Choice:
    """Shuffle 4 distinct options (the correct one among them) and letter them A-D."""
    options = list(options)
    if len(options) != 4 or len(set(options)) != 4 or correct not in options:
        raise ValueError(f"need 4 distinct options including {correct!r}, got {options}")
    rng.shuffle(options)
    return Choice(tuple(options), options.index(correct))


def camera_choice(moves: Sequence[str], rng: random.Random) -> Choice:
    correct = camera_moves_text(moves)
    return shuffled_choice(correct, [correct] + [camera_moves_text(d) for d in camera_distractors(moves, rng)], rng)
