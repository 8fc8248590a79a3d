"""Rescore a DSR results file: re-extract each prediction from the stored model text, recompute the
hits, aggregate by sub-task, write the summary and the rescored lines, print the table.

    python -m evaluation.rescore RESULTS.jsonl [--summary OUT.json] [--output RESCORED.jsonl] [--letters ABCD]

Defaults: `<name>_rescored_summary.json` and `<name>_rescored.jsonl` next to the results (the
evaluation's own summary is never overwritten). Each rescored line keeps its fields, with `pred`,
`answer` and `hit` replaced; a line recorded as an inference error (`error` true) keeps an empty
prediction (its `raw` is the error message, not model text).

`total` and `skipped` are not in a results file: they are taken from the evaluation's summary
(`<name>_summary.json`) when it exists next to the results and agrees with them (its `eval_count`
equals the number of lines); otherwise `total` = the number of lines and `skipped` = 0, and the
summary says so in `counts_from`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from dift.core.cli import HelpFormatter, require_path, run_cli
from dift.core.extraction import EVAL_LETTERS, check_letters, extract_answer, score_answer
from dift.core.logs import setup_logging

from .metrics import aggregate, format_report
from .results import ResultsFileError, atomic_write_json, read_results, summary_path, write_results

log = logging.getLogger("evaluation.rescore")


def rescore_record(record: Mapping, letters: str = EVAL_LETTERS) -> dict:
    """The record with pred / answer / hit recomputed from its raw text and gt."""
    out = dict(record)
    pred = "" if record.get("error") else extract_answer(str(record.get("raw") or ""), letters)
    out["pred"] = pred
    out["answer"] = pred
    out["hit"] = score_answer(pred, str(record.get("gt") or ""))
    return out


def rescore_records(records: Iterable[Mapping], letters: str = EVAL_LETTERS) -> list[dict]:
    return [rescore_record(r, letters) for r in records]


def check_records(records: list[dict], results_file: Path) -> None:
    """A one-line ResultsFileError for a record rescoring cannot trust: no records, a missing or
    mistyped field, a ground truth that is not one letter, a repeated question index."""
    if not records:
        raise ResultsFileError(f"{results_file}: no records to rescore")
    first_line: dict[int, int] = {}
    for line_no, record in enumerate(records, 1):
        where = f"{results_file} record {line_no}"
        for field in ("raw", "gt"):
            if field not in record:
                raise ResultsFileError(f"{where}: missing field {field!r}")
            if not isinstance(record[field], str):
                raise ResultsFileError(f"{where}: field {field!r} is {type(record[field]).__name__}, not text")
        gt = record["gt"]
        if len(gt) > 1 or (gt and not "A" <= gt <= "Z"):
            raise ResultsFileError(f"{where}: field 'gt' is {gt!r}, not one capital letter")
        if "error" in record and not isinstance(record["error"], bool):
            raise ResultsFileError(f"{where}: field 'error' is {record['error']!r}, not true/false")
        n_options = record.get("num_options", 4)
        if not isinstance(n_options, int) or isinstance(n_options, bool) or n_options < 0:
            raise ResultsFileError(f"{where}: field 'num_options' is {n_options!r}, not a count")
        if not isinstance(record.get("subtask_type", ""), str):
            raise ResultsFileError(f"{where}: field 'subtask_type' is not text")
        index = record["index"]
        if index in first_line:
            raise ResultsFileError(f"{where}: question index {index} repeats record {first_line[index]}")
        first_line[index] = line_no


def counts_from_summary(results_file: Path, n_records: int) -> tuple[int, int, str]:
    """(total, skipped, where they came from) for a results file (see the module docstring)."""
    path = summary_path(results_file)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if int(saved["eval_count"]) == n_records:
                return int(saved["total"]), int(saved["skipped"]), str(path)
            log.warning("%s counts %s evaluated questions but the results have %d lines; not using its totals",
                        path, saved["eval_count"], n_records)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("cannot read the totals of %s (%s)", path, err)
    return n_records, 0, "results file (no evaluation summary: total = lines, skipped = 0)"


def rescore_file(results_file: str | Path, summary_out: str | Path | None = None, output: str | Path | None = None,
                 letters: str = EVAL_LETTERS) -> dict:
    """Rescore `results_file`; writes the summary and the rescored lines; returns the summary."""
    results_file = Path(results_file)
    if not results_file.is_file():
        raise FileNotFoundError(f"results file not found: {results_file}")
    records = read_results(results_file)
    check_records(records, results_file)
    records = rescore_records(records, letters)
    total, skipped, source = counts_from_summary(results_file, len(records))
    summary = aggregate(records, total=total, skipped=skipped)
    summary["counts_from"] = source
    summary["letters"] = letters
    summary["results_file"] = str(results_file)
    stem = results_file.with_suffix("")
    summary_out = Path(summary_out) if summary_out else Path(f"{stem}_rescored_summary.json")
    output = Path(output) if output else Path(f"{stem}_rescored.jsonl")
    write_results(output, records)
    atomic_write_json(summary_out, summary)
    return summary


PROG = "python -m evaluation.rescore"


def _letters_arg(value: str) -> str:
    try:
        return check_letters(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("results", help="results JSONL written by python -m evaluation.dsr_eval")
    parser.add_argument("--summary", default=None, help="summary JSON to write (default <name>_rescored_summary.json)")
    parser.add_argument("--output", default=None, help="rescored JSONL to write (default <name>_rescored.jsonl)")
    parser.add_argument("--letters", default=EVAL_LETTERS, type=_letters_arg,
                        help="allowed answer letters (the RL reward uses ABCDEF)")
    args = parser.parse_args(argv)
    require_path("results", args.results, "file")
    setup_logging(fmt="%(message)s")
    summary = rescore_file(args.results, args.summary, args.output, args.letters)
    print(format_report(summary), flush=True)
    return summary


def cli(argv: list[str] | None = None) -> None:
    """`python -m evaluation.rescore`: a bad results file ends with one line naming file and record."""
    run_cli(PROG, lambda: main(argv), failures=lambda: (FileNotFoundError, ResultsFileError))


if __name__ == "__main__":
    cli()
