"""Step `check`: keep only training records that are usable; the rest are dropped with file:line reasons.

In:  a DIFT or RL JSONL (default: OUT/dift_data.unchecked.jsonl and OUT/rl_data.unchecked.jsonl)
Out: the kept records (default: OUT/dift_data.jsonl and OUT/rl_data.jsonl), written atomically;
     relative image paths are rebased if the output lives in another folder.
DIFT: `<think>...</think><answer>...</answer>` well formed, exactly one `<output_image>` per helper
image (at least one), question present, every image file present. RL: a question, at least two
options, the Correct letter among them, frames present. An empty input gives an empty output
(the original crashed on it).

    python -m preprocess check --out data/engine
    python -m preprocess check --input some.jsonl --output some_cleaned.jsonl
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from dift.core.cli import JobFailed, require_path

from .arguments import CheckArguments, parse_step_args
from .convert import rebase
from .cot import structure_problem
from .labels import LETTERS
from .layout import DIFT_JSONL, RL_JSONL, unchecked_name, write_jsonl_atomic
from .records import loads_strict, read_text
from .runner import setup_logging

log = logging.getLogger(__name__)
IMAGE_FIELDS = {"dift": ("image_input", "image_output"), "rl": ("frame_paths",)}


def _paths(value) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return value
    return None


def record_format(rec: dict) -> str:
    return "rl" if "Question" in rec or "Correct" in rec else "dift"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name the file system refuses (a NUL byte, too long)
        return False


def record_problem(rec, base: Path) -> str | None:
    """Why a record is unusable (None if it is fine); relative paths resolve against `base`."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not isinstance(rec.get("id"), str) or not rec["id"].strip():
        return "id must be a non-empty string"
    fmt = record_format(rec)
    if fmt == "dift":
        missing = [k for k in ("image_input", "image_output", "text_input", "text_output") if k not in rec]
        if missing:
            return f"missing field(s) {', '.join(missing)}"
        helpers = _paths(rec["image_output"])
        if helpers is None or not helpers:
            return "image_output must be a non-empty list of paths"
        if _paths(rec["image_input"]) is None or not rec["image_input"]:
            return "image_input must be a path or a non-empty list of paths"
        if not isinstance(rec["text_input"], str) or not rec["text_input"].strip():
            return "empty text_input"
        problem = structure_problem(rec["text_output"], len(helpers), "think")
        if problem:
            return f"text_output: {problem}"
    else:
        if not isinstance(rec.get("Question"), str) or not rec["Question"].strip():
            return "empty Question"
        options = [k for k in LETTERS if isinstance(rec.get(k), str) and rec[k].strip()]
        if len(options) < 2:
            return "fewer than two options"
        if str(rec.get("Correct", "")).strip().upper() not in options:
            return f"Correct {rec.get('Correct')!r} is not one of the options {options}"
        if not _paths(rec.get("frame_paths")):
            return "frame_paths must be a non-empty list of paths"
    for key in IMAGE_FIELDS[fmt]:
        for p in _paths(rec[key]):
            if not _is_file(base / p):
                return f"{key}: {p} not found"
    return None


def check_file(input_path: str | Path, output_path: str | Path) -> tuple[int, Counter]:
    """Copy the usable records of `input_path` to `output_path`; returns (kept, reasons dropped).
    A record is dropped, with a warning naming file:line and the reason, when it is not valid JSON
    (strictly: no repeated keys, no NaN), fails `record_problem`, or repeats an earlier record's id."""
    input_path, output_path = Path(input_path), Path(output_path)
    base, out_dir = input_path.parent, output_path.parent
    kept, dropped, ids = [], Counter(), {}
    log.info("check: reading %s", input_path)
    for lineno, line in enumerate(read_text(input_path, "training records").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = loads_strict(line)
        except ValueError as err:
            problem = f"invalid JSON ({getattr(err, 'msg', err)})"
        else:
            problem = record_problem(rec, base)
            if not problem and rec["id"] in ids:
                problem = f"id: {rec['id']!r} repeats line {ids[rec['id']]}"
        if problem:
            log.warning("%s:%d: dropped: %s", input_path, lineno, problem)
            dropped[problem.split(":")[0]] += 1
            continue
        ids[rec["id"]] = lineno
        if base.resolve() != out_dir.resolve():
            for key in IMAGE_FIELDS[record_format(rec)]:
                value = rec[key]
                rec[key] = rebase(value, base, out_dir) if isinstance(value, str) else [rebase(p, base, out_dir) for p in value]
        kept.append(rec)
    write_jsonl_atomic(output_path, kept)
    log.info("check: %s -> %s: kept %d, dropped %d %s", input_path, output_path, len(kept), sum(dropped.values()),
             dict(dropped) if dropped else "")
    return len(kept), dropped


def verdict(input_path: Path, kept: int, dropped: Counter, max_skip_fraction: float | None) -> None:
    """JobFailed when every record was dropped, or more than --max_skip_fraction of them."""
    total = kept + sum(dropped.values())
    if not total:
        log.warning("check: %s holds no records", input_path)
        return
    n = total - kept
    if n and (kept == 0 if max_skip_fraction is None else n / total > max_skip_fraction):
        reasons = ", ".join(f"{k} {v}" for k, v in dropped.most_common(3))
        limit = "every record" if max_skip_fraction is None else f"more than --max_skip_fraction {max_skip_fraction:g}"
        raise JobFailed(f"check: {input_path}: {limit} dropped ({n} of {total}: {reasons}; the log names each line)")


def run(args: CheckArguments) -> int:
    setup_logging(args.log_level)
    if args.input:
        require_path("--input", args.input, "file")
        src = Path(args.input)
        pairs = [(src, Path(args.output) if args.output else src.with_name(f"{src.stem}_cleaned.jsonl"))]
    else:
        require_path("--out", args.out, "dir")
        root = Path(args.out)
        pairs = [(root / unchecked_name(name), root / name) for name in (DIFT_JSONL, RL_JSONL)]
        for src, _ in pairs:
            if not src.is_file():
                raise FileNotFoundError(f"{src}: not found (run python -m preprocess convert --out {root} first)")
    for src, dst in pairs:
        verdict(src, *check_file(src, dst), args.max_skip_fraction)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess check` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args("check", argv))
