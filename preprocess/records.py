"""Reading the engine's own intermediate files, checked: clip.json, objects.json, the per-clip QA
lists (camera_qa.json, object_qa.json) and the QA JSONL files merge writes and convert reads.

A reader returns values of the documented shape or raises `RecordError`, one line naming the file,
the line or item, and the field (`clips/x/clip.json: field frames[3].time_s: expected a number, got
'abc'`). JSON is read strictly: a repeated key, NaN/Infinity and text that is not UTF-8 are errors,
not a silently chosen value. (The SpatialVID inputs have their reader in `preprocess.spatialvid`,
the training records their check in `preprocess.check`.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

QA_KINDS = ("camera", "object")
_LOOK_UP = object()  # "read the field from the record" (a value given instead may be None)
OPTION_LETTERS = "ABCD"


class RecordError(ValueError):
    """A file's content is unusable; the message (one line) names the file, line or item, and field."""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {key!r} appears twice")
        obj[key] = value
    return obj


def _no_surrogates(value) -> None:
    """Lone surrogates (`"\\ud800"`) parse but cannot be written back as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds an invalid Unicode escape (a lone surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k)
            _no_surrogates(v)
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(v)


def loads_strict(text: str):
    """json.loads that refuses repeated keys, NaN/Infinity and lone surrogates (ValueError)."""
    value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    _no_surrogates(value)
    return value


def _json_problem(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON ({err.msg}, column {err.colno})"
    return f"invalid JSON ({err})"


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file; FileNotFoundError / RecordError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: {what} is a folder, not a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise RecordError(f"{path}:{line}: not UTF-8 text (byte {err.start})") from None


def read_json(path: str | Path, what: str = "file"):
    """A JSON file, strictly parsed (see the module docstring), with one-line errors naming the file."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return loads_strict(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}:{err.lineno}: {_json_problem(err)}") from None
    except ValueError as err:
        raise RecordError(f"{path}: {_json_problem(err)}") from None


def iter_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSONL file; RecordError names file:line."""
    path = Path(path)
    for lineno, line in enumerate(read_text(path, what).split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield lineno, loads_strict(line)
        except ValueError as err:
            raise RecordError(f"{path}:{lineno}: {_json_problem(err)}") from None


# ---------------------------------------------------------------------------------------------
# Field checks


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fields:
    """Field checks of one record, each failing with `<where>: field <name>: <problem>`."""

    def __init__(self, record, where: str):
        self.where = where
        if not isinstance(record, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
        self.record = record

    def fail(self, name: str, problem: str):
        raise RecordError(f"{self.where}: field {name}: {problem}")

    def get(self, name: str, value=_LOOK_UP, *, path: str | None = None):
        path = path or name
        if value is _LOOK_UP:
            if name not in self.record:
                self.fail(path, "missing")
            value = self.record[name]
        return path, value

    def string(self, name: str, *, nonempty: bool = True, value=_LOOK_UP, path: str | None = None) -> str:
        path, value = self.get(name, value, path=path)
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_show(value)}")
        if nonempty and not value.strip():
            self.fail(path, "empty")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self.record.get(name)
        return None if value is None else self.string(name)

    def integer(self, name: str, low: int = 0, high: int | None = None, *, value=_LOOK_UP, path: str | None = None) -> int:
        path, value = self.get(name, value, path=path)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(path, f"expected an integer, got {_show(value)}")
        if value < low or (high is not None and value > high):
            self.fail(path, f"{value} is out of range [{low}, {high if high is not None else 'inf'}]")
        return value

    def number(self, name: str, low: float = 0.0, *, value=_LOOK_UP, path: str | None = None) -> float:
        path, value = self.get(name, value, path=path)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            self.fail(path, f"expected a number, got {_show(value)}")
        if value < low:
            self.fail(path, f"{value} is below {low}")
        return float(value)

    def string_list(self, name: str, *, nonempty: bool = True) -> list[str]:
        path, value = self.get(name)
        if not isinstance(value, list):
            self.fail(path, f"expected a list of strings, got {_show(value)}")
        if nonempty and not value:
            self.fail(path, "empty list")
        for i, item in enumerate(value):
            self.string(name, value=item, path=f"{path}[{i}]")
        return value

    def mapping(self, name: str) -> dict:
        path, value = self.get(name)
        if not isinstance(value, dict):
            self.fail(path, f"expected an object, got {_show(value)}")
        return value

    def listing(self, name: str) -> list:
        path, value = self.get(name)
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {_show(value)}")
        return value


# ---------------------------------------------------------------------------------------------
# clip.json, objects.json


def check_clip(clip, where: str) -> dict:
    """clip.json's content (see `preprocess` for the fields), checked."""
    f = _Fields(clip, where)
    f.string("video_id")
    f.string("group", nonempty=False)
    f.string("source_video", nonempty=False)
    f.number("source_fps")
    f.integer("width", 1)
    f.integer("height", 1)
    f.string("scene_summary", nonempty=False)
    frames = f.listing("frames")
    if not frames:
        f.fail("frames", "empty list")
    for n, frame in enumerate(frames):
        ff = _Fields(frame, f"{where}: frames[{n}]")
        ff.string("file")
        ff.integer("seq", -2**63)
        ff.integer("source_index")
        ff.number("time_s")
    for i, seg in enumerate(f.listing("segments")):
        sf = _Fields(seg, f"{where}: segments[{i}]")
        sf.string("key")
        a = sf.integer("start_frame", 0, len(frames) - 1)
        sf.integer("end_frame", a + 1, len(frames) - 1)
        sf.number("start_time_s")
        sf.number("end_time_s")
        sf.string_list("moves", nonempty=False)
    return clip


def read_clip_json(path: str | Path) -> dict:
    return check_clip(read_json(path, "clip.json"), str(path))


def read_objects_json(path: str | Path) -> dict:
    """objects.json: {"dynamic_object": label or null, "static_object": label or null}."""
    objects = read_json(path, "objects.json")
    f = _Fields(objects, str(path))
    for name in ("dynamic_object", "static_object"):
        f.get(name)
        f.optional_string(name)
    return {"dynamic_object": objects["dynamic_object"], "static_object": objects["static_object"]}


# ---------------------------------------------------------------------------------------------
# QA records


def check_qa_record(rec, where: str) -> dict:
    """One QA record (see `preprocess.qa`), checked: fields present and typed, the answer among the
    options, the correct answer its text."""
    f = _Fields(rec, where)
    f.string("id")
    f.string("clip_id")
    kind = f.string("kind")
    if kind not in QA_KINDS:
        f.fail("kind", f"expected one of {', '.join(QA_KINDS)}, got {_show(kind)}")
    f.string("type")
    f.string("question")
    f.string("question_text")
    options = f.mapping("options")
    if not 2 <= len(options) <= len(OPTION_LETTERS) or any(k not in OPTION_LETTERS for k in options):
        f.fail("options", f"expected 2 to 4 options lettered {', '.join(OPTION_LETTERS)}, got {_show(sorted(options))}")
    for letter, text in options.items():
        f.string(letter, value=text, path=f"options.{letter}")
    answer = f.string("answer")
    if answer not in options:
        f.fail("answer", f"{_show(answer)} is not one of the options {', '.join(options)}")
    if f.string("correct_answer") != f"{answer}. {options[answer]}":
        f.fail("correct_answer", f"{_show(rec['correct_answer'])} is not '{answer}. <option {answer}>'")
    f.string("cot")
    f.string_list("mask_image_paths")
    f.string_list("original_image_paths")
    return rec


def read_qa_items(path: str | Path, what: str = "QA file") -> list[dict]:
    """A clip's QA items (a JSON list), each checked."""
    items = read_json(path, what)
    if not isinstance(items, list):
        raise RecordError(f"{path}: expected a JSON list of QA items, got {type(items).__name__}")
    return [check_qa_record(item, f"{path}: item {i}") for i, item in enumerate(items)]


def read_qa_jsonl(path: str | Path) -> list[dict]:
    """QA records, one a line, each checked; ids must be unique."""
    records, seen = [], {}
    for lineno, rec in iter_jsonl(path, "QA records"):
        check_qa_record(rec, f"{path}:{lineno}")
        if rec["id"] in seen:
            raise RecordError(f"{path}:{lineno}: field id: {_show(rec['id'])} repeats line {seen[rec['id']]}")
        seen[rec["id"]] = lineno
        records.append(rec)
    return records
