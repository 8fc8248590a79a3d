"""The evaluation's files: the results JSONL (append-only, one line per evaluated question, fsynced
per batch), its per-rank part files in data-parallel runs, resuming from them, merging them into
the final file in benchmark order, and the atomically written summary JSON.

Resuming: the indices present in the final file or in any part file of the same results file are
done. A torn last line (a process killed mid-write) is dropped and its question redone; a bad line
anywhere else is a one-line error naming file and line, because silently dropping it would lose a
result.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

# The fields of a results line, in order (spec evaluation.md "Outputs"), then ours.
RESULT_FIELDS = ("index", "video_id", "video_path", "question", "gt", "pred", "answer", "raw", "hit",
                 "subtask_type")
EXTRA_FIELDS = ("error", "finished", "num_options", "num_tokens")


class ResultsFileError(ValueError):
    """A results file that cannot be read back."""


def results_path(output_file: str | os.PathLike) -> Path:
    """The results file for `--output_file`: its extension is forced to .jsonl (as the original)."""
    return Path(output_file).with_suffix(".jsonl")


def summary_path(results_file: str | os.PathLike) -> Path:
    """`<name>_summary.json` next to `<name>.jsonl`."""
    path = Path(results_file)
    return path.with_name(f"{path.stem}_summary.json")


def run_config_path(results_file: str | os.PathLike) -> Path:
    path = Path(results_file)
    return path.with_name(f"{path.stem}_run.json")


def part_path(results_file: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where a rank appends: the results file itself in a single-process run, else its own part file."""
    path = Path(results_file)
    if world_size == 1:
        return path
    return path.with_name(f"{path.stem}.part{rank}-of-{world_size}.jsonl")


def part_files(results_file: str | os.PathLike) -> list[Path]:
    """Every part file of a results file, whatever world size wrote it."""
    path = Path(results_file)
    return sorted(path.parent.glob(f"{path.stem}.part*-of-*.jsonl"))


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_line(line: str, where: str) -> dict:
    try:
        record = json.loads(line, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        raise ResultsFileError(f"{where}: invalid JSON ({err.msg})") from None
    except ValueError as err:
        raise ResultsFileError(f"{where}: invalid JSON ({err})") from None
    index = record.get("index") if isinstance(record, dict) else None
    if not isinstance(index, int) or isinstance(index, bool):
        raise ResultsFileError(f"{where}: not a results record (no integer 'index')")
    return record


def read_results(path: str | os.PathLike) -> list[dict]:
    """The records of a results file ([] if it does not exist). A torn last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" if the file ends with a newline, else the torn last line
    records = []
    for line_no, raw in enumerate(lines, 1):
        if raw.strip():
            records.append(_parse_line(raw.decode("utf-8", errors="replace"), f"{path} line {line_no}"))
    if tail.strip():
        try:
            records.append(_parse_line(tail.decode("utf-8"), f"{path} line {len(lines) + 1}"))
        except (ResultsFileError, UnicodeDecodeError):
            pass  # killed mid-write: the question is redone
    return records


def repair_torn_tail(path: str | os.PathLike) -> None:
    """Make a results file end with a complete line: a torn last line is cut off, a complete one
    missing only its newline gets it. Called before appending."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        _parse_line(tail.decode("utf-8"), str(path))
    except (ResultsFileError, UnicodeDecodeError):
        with path.open("r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        return
    with path.open("ab") as f:
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())


def completed_indices(results_file: str | os.PathLike, retry_errors: bool = False) -> set[int]:
    """Indices already evaluated: in the results file or in any of its part files. With
    `retry_errors`, a question recorded only as an inference error counts as not done."""
    done = set()
    for path in [Path(results_file), *part_files(results_file)]:
        done.update(r["index"] for r in read_results(path) if not (retry_errors and r.get("error")))
    return done


class ResultsWriter:
    """Appends records to a results (or part) file; each batch is flushed and fsynced, so a kill
    loses at most the batch being written."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def write_batch(self, records: Iterable[Mapping]) -> None:
        text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
        if text:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_results(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Write a whole results file atomically."""
    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records))


def merge_results(results_file: str | os.PathLike) -> list[dict]:
    """Fold the part files into the results file: one record per index (the first one written
    wins, except that an answer beats an inference error: a retried question), in index order,
    written atomically; the part files are removed only afterwards."""
    results_file = Path(results_file)
    parts = part_files(results_file)
    by_index: dict[int, dict] = {}
    for path in [results_file, *parts]:
        for record in read_results(path):
            kept = by_index.get(record["index"])
            if kept is None or (kept.get("error") and not record.get("error")):
                by_index[record["index"]] = record
    records = [by_index[i] for i in sorted(by_index)]
    write_results(results_file, records)
    for path in parts:
        path.unlink(missing_ok=True)
    return records
