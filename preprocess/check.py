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

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .convert import rebase
from .cot import structure_problem
from .labels import LETTERS
from .layout import DIFT_JSONL, RL_JSONL, unchecked_name, write_jsonl_atomic
from .runner import parse_args, setup_logging

log = logging.getLogger(__name__)
IMAGE_FIELDS = {"dift": ("image_input", "image_output"), "rl": ("frame_paths",)}


@dataclass
class CheckArguments:
    out: str | None = field(default=None, metadata={"help": "Engine output root: check both default files."})
    input: str | None = field(default=None, metadata={"help": "One JSONL to check (instead of --out)."})
    output: str | None = field(default=None, metadata={"help": "Where kept records go (default <input>_cleaned.jsonl)."})
    log_level: str = field(default="INFO")


def _paths(value) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return value
    return None


def record_format(rec: dict) -> str:
    return "rl" if "Question" in rec or "Correct" in rec else "dift"


def record_problem(rec, base: Path) -> str | None:
    """Why a record is unusable (None if it is fine); relative paths resolve against `base`."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    fmt = record_format(rec)
    if fmt == "dift":
        missing = [k for k in ("id", "image_input", "image_output", "text_input", "text_output") if k not in rec]
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
            if not (base / p).is_file():
                return f"{key}: {p} not found"
    return None


def check_file(input_path: str | Path, output_path: str | Path) -> tuple[int, Counter]:
    """Copy the usable records of `input_path` to `output_path`; returns (kept, reasons dropped)."""
    input_path, output_path = Path(input_path), Path(output_path)
    base, out_dir = input_path.parent, output_path.parent
    kept, dropped = [], Counter()
    with open(input_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"invalid JSON ({err.msg})"
            else:
                problem = record_problem(rec, base)
            if problem:
                log.warning("%s:%d: dropped: %s", input_path, lineno, problem)
                dropped[problem.split(":")[0]] += 1
                continue
            if base.resolve() != out_dir.resolve():
                for key in IMAGE_FIELDS[record_format(rec)]:
                    value = rec[key]
                    rec[key] = rebase(value, base, out_dir) if isinstance(value, str) else [rebase(p, base, out_dir) for p in value]
            kept.append(rec)
    write_jsonl_atomic(output_path, kept)
    log.info("check: %s -> %s: kept %d, dropped %d %s", input_path, output_path, len(kept), sum(dropped.values()),
             dict(dropped) if dropped else "")
    return len(kept), dropped


def main(argv=None) -> int:
    args = parse_args(CheckArguments, argv)
    setup_logging(args.log_level)
    if args.input:
        src = Path(args.input)
        check_file(src, args.output or src.with_name(f"{src.stem}_cleaned.jsonl"))
    elif args.out:
        root = Path(args.out)
        for name in (DIFT_JSONL, RL_JSONL):
            check_file(root / unchecked_name(name), root / name)
    else:
        raise SystemExit("check: give --out (engine output root) or --input")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
