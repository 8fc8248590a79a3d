"""Loading the DSR benchmark (parquet, JSON or JSONL) into numbered questions.

Rules (spec evaluation.md "Benchmark input"):
- rows are numbered 0..N-1 in file order (`index`); `max_samples` keeps the first N;
- fields: `videoID` (or `video`), `question`, `options` (or `candidates`: a list, a numpy array,
  or a string holding a Python list literal, read with `ast.literal_eval`), `answer` (stripped,
  upper-cased, first character kept), `type` (the sub-task key);
- a JSON file is a list of records or a dict whose values are records; JSONL is one record a line;
- the video of a row is `VIDEO_ROOT/<videoID>.mp4`; a row whose video id is empty (null) is kept
  here and skipped by the evaluation, as the original skips it.
A row lacking a field, or with an unreadable one, is a one-line `BenchmarkError` naming file and row.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dift.core.conversation import question_with_options
from dift.core.extraction import normalize_gt

VIDEO_ID_FIELDS = ("videoID", "video")
OPTIONS_FIELDS = ("options", "candidates")
VIDEO_EXTENSION = ".mp4"
ID_FIELDS = ("id", "question_id", "qid")  # an explicit question id, if the file has one, must be unique
OPTION_LETTER_RE = re.compile(r"^\s*\(?([A-Z])\s*[.):]")  # "A. text", "(B) text", "C: text"


class BenchmarkError(ValueError):
    """A benchmark file or row that cannot be used."""


@dataclass(frozen=True)
class BenchmarkItem:
    index: int  # row number in file order, 0-based
    video_id: str | None  # None: the row has no video id (skipped by the evaluation)
    question: str  # the bare question
    options: tuple[str, ...]
    gt: str  # ground-truth letter
    subtask_type: str

    @property
    def question_text(self) -> str:
        """Question + blank line + options: what the model is asked (before the output-format suffix)."""
        return question_with_options(self.question, self.options)

    def video_path(self, video_root: str | os.PathLike) -> Path | None:
        return None if self.video_id is None else Path(video_root) / f"{self.video_id}{VIDEO_EXTENSION}"


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return True
    return isinstance(value, str) and not value.strip()


def parse_options(value, where: str = "options") -> tuple[str, ...]:
    """Options from a list / tuple / numpy array / string holding a Python list literal; () if absent."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        try:
            value = ast.literal_eval(text)  # never eval(): the file is data
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise BenchmarkError(f"{where}: not a list literal: {text[:60]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise BenchmarkError(f"{where}: expected a list of options, got {type(value).__name__}")
    return tuple(str(o) for o in value if o is not None)  # raw, as the original joined them


def option_letters(options: tuple[str, ...]) -> str:
    """The letters the options answer to: each option's own leading letter ("A. left"), else its
    position (A for the first)."""
    letters = []
    for i, option in enumerate(options):
        match = OPTION_LETTER_RE.match(option)
        letters.append(match.group(1) if match else chr(ord("A") + i))
    return "".join(letters)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _loads(text: str):
    """json.loads without NaN/Infinity (Python accepts them; they are not JSON and hide missing values)."""
    return json.loads(text, parse_constant=_reject_constant)


def _first_present(record: Mapping, names: tuple[str, ...]):
    """(name, value) of the first of `names` present as a key, or (None, None)."""
    for name in names:
        if name in record:
            return name, record[name]
    return None, None


def parse_item(record: Mapping, index: int, where: str) -> BenchmarkItem:
    """One benchmark row; `where` (e.g. "bench.parquet row 3") prefixes every error."""
    if not isinstance(record, Mapping):
        raise BenchmarkError(f"{where}: expected an object, got {type(record).__name__}")
    id_key, video_id = _first_present(record, VIDEO_ID_FIELDS)
    if id_key is None:
        raise BenchmarkError(f"{where}: missing field 'videoID' (or 'video')")
    for field in ("question", "answer", "type"):
        if field not in record:
            raise BenchmarkError(f"{where}: missing field {field!r}")
        if field != "type" and _is_missing(record[field]):
            raise BenchmarkError(f"{where}: field {field!r} is empty")
    if _is_missing(record["type"]):
        raise BenchmarkError(f"{where}: field 'type' is empty (the sub-task key)")
    options_key, options = _first_present(record, OPTIONS_FIELDS)
    options = parse_options(options, f"{where} field {options_key!r}")
    gt = normalize_gt(record["answer"])
    if not ("A" <= gt <= "Z"):
        raise BenchmarkError(f"{where}: field 'answer' is {record['answer']!r}, not an option letter")
    if options and gt not in option_letters(options):
        raise BenchmarkError(f"{where}: field 'answer' is {gt!r}, not one of the options' letters "
                             f"{option_letters(options)}")
    return BenchmarkItem(
        index=index,
        video_id=None if _is_missing(video_id) else str(video_id).strip(),
        question=str(record["question"]),  # as the file has it: the original concatenated the raw strings
        options=options,
        gt=gt,
        subtask_type=str(record["type"]),
    )


def read_records(path: str | os.PathLike, limit: int | None = None) -> list[Mapping]:
    """The raw records of a parquet / JSON / JSONL file, in file order (the first `limit` if given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
            if limit is not None:
                frame = frame.iloc[:limit]
            return frame.to_dict("records")
        except Exception as err:  # pyarrow's errors for a corrupt file span many types, some at conversion
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise BenchmarkError(f"{path}: not a readable parquet file ({type(err).__name__}: {reason[:120]})") from None
    if suffix == ".jsonl":
        records = []
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, 1):
                if limit is not None and len(records) >= limit:
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BenchmarkError(f"{path} line {line_no}: not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    records.append(_loads(line))
                except json.JSONDecodeError as err:
                    raise BenchmarkError(f"{path} line {line_no}: invalid JSON ({err.msg})") from None
                except ValueError as err:
                    raise BenchmarkError(f"{path} line {line_no}: invalid JSON ({err})") from None
        return records
    if suffix == ".json":
        try:
            data = _loads(path.read_bytes().decode("utf-8"))
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise BenchmarkError(f"{path}: invalid JSON ({err})") from None
        if isinstance(data, Mapping):
            data = list(data.values())
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: expected a list of records or a dict of records")
        return data[:limit] if limit is not None else data
    raise BenchmarkError(f"{path}: unknown benchmark format {suffix!r} (use .parquet, .json or .jsonl)")


def load_benchmark(path: str | os.PathLike, max_samples: int | None = None) -> list[BenchmarkItem]:
    """The benchmark's questions, numbered in file order (the first `max_samples` if given)."""
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    records = read_records(path, max_samples)
    if not records:
        raise BenchmarkError(f"{path}: no questions in the file")
    items = [parse_item(record, i, f"{path} row {i}") for i, record in enumerate(records)]
    check_unique_ids(records, path)
    return items


def check_unique_ids(records: list, path) -> None:
    """An explicit question id (`id`, `question_id` or `qid`) that repeats is an error naming both rows."""
    for name in ID_FIELDS:
        first_row: dict = {}
        for row, record in enumerate(records):
            if name not in record or _is_missing(record[name]):
                continue
            key = str(record[name])
            if key in first_row:
                raise BenchmarkError(f"{path} row {row}: field {name!r} = {key!r} repeats row {first_row[key]}")
            first_row[key] = row
