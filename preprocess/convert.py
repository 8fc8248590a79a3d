"""Step `convert`: QA records -> the DIFT training format and the 4DRL format.

In:  OUT/qa/qa_all.jsonl (or --input; QA records with paths relative to OUT)
Out: OUT/dift_data.unchecked.jsonl  {id, image_input (clip frames), image_output (helper images),
         text_input (question with options), text_output (the CoT with <think> tags)}
     OUT/rl_data.unchecked.jsonl    {id, Question, A, B, C, D, Correct, frame_paths}
Image paths are rewritten relative to the folder of the JSONL they are written to, so the data can
be moved as one folder (the original wrote absolute machine paths). The output-format suffix is
not added here: training adds it. `check` turns the unchecked files into the final ones.

    python -m preprocess convert --out data/engine
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dift.core.cli import JobFailed, require_path

from .arguments import ConvertArguments, parse_step_args
from .labels import LETTERS
from .layout import DIFT_JSONL, QA_ALL_JSONL, QA_DIR, RL_JSONL, unchecked_name, write_jsonl_atomic
from .records import read_qa_jsonl
from .runner import setup_logging

log = logging.getLogger(__name__)


def rebase(path: str, from_dir: Path, to_dir: Path) -> str:
    """A relative path under `from_dir` rewritten relative to `to_dir` (absolute paths stay)."""
    if os.path.isabs(path):
        return path
    return Path(os.path.relpath(from_dir / path, to_dir)).as_posix()


def think_tags(cot: str) -> str:
    """The LLM's <thinking> tags become the model's <think> tags."""
    return cot.replace("<thinking>", "<think>").replace("</thinking>", "</think>")


def to_dift(qa: dict, root: Path, out_dir: Path) -> dict:
    return {
        "id": qa["id"],
        "image_input": [rebase(p, root, out_dir) for p in qa["original_image_paths"]],
        "image_output": [rebase(p, root, out_dir) for p in qa["mask_image_paths"]],
        "text_input": qa["question"],
        "text_output": think_tags(qa["cot"]),
    }


def to_rl(qa: dict, root: Path, out_dir: Path) -> dict:
    record = {"id": qa["id"], "Question": qa["question_text"]}
    record.update({letter: qa["options"].get(letter, "") for letter in LETTERS})
    record["Correct"] = qa["answer"]
    record["frame_paths"] = [rebase(p, root, out_dir) for p in qa["original_image_paths"]]
    return record


def convert(out_root: str | Path, input_path=None, dift_output=None, rl_output=None) -> tuple[int, int]:
    root = Path(out_root)
    input_path = Path(input_path or root / QA_DIR / QA_ALL_JSONL)
    dift_output = Path(dift_output or root / unchecked_name(DIFT_JSONL))
    rl_output = Path(rl_output or root / unchecked_name(RL_JSONL))
    if not input_path.is_file():
        raise FileNotFoundError(f"{input_path}: QA records not found (run python -m preprocess merge --out {root} first)")
    log.info("convert: reading %s", input_path)
    records = read_qa_jsonl(input_path)
    if not records:
        raise JobFailed(f"convert: {input_path} holds no QA records (the QA steps made no items; see qa/merge_stats.json)")
    n_dift = write_jsonl_atomic(dift_output, (to_dift(r, root, dift_output.parent) for r in records))
    n_rl = write_jsonl_atomic(rl_output, (to_rl(r, root, rl_output.parent) for r in records))
    log.info("convert: %d records -> %s, %s", len(records), dift_output, rl_output)
    return n_dift, n_rl


def run(args: ConvertArguments) -> int:
    setup_logging(args.log_level)
    require_path("--out", args.out, "dir")
    require_path("--input", args.input, "file")
    convert(args.out, args.input, args.dift_output, args.rl_output)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m preprocess convert` without the exit-code wrapper: returns 0 or raises."""
    return run(*parse_step_args("convert", argv))
