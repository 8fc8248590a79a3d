"""The resumable, parallel per-clip loop every step runs, and the shared CLI plumbing.

A step is a function `clip_id -> dict of counts`. `run_step` runs it over clips in a thread pool
(`--workers`), skips clips listed in `state/<step>/completed.txt`, appends each finished clip there
and each failed one (with its reason) to `state/<step>/failed.jsonl`, shows a progress bar, and
writes `state/<step>/summary.json`. A clip killed half-way is neither completed nor failed, so
the next run does it again from the start; its outputs are written atomically, so nothing is
duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .layout import STATE_DIR, append_line, read_complete_lines, write_json_atomic

log = logging.getLogger(__name__)


class ClipFailure(Exception):
    """A clip cannot be processed; the message is the reason recorded in failed.jsonl."""


class StepState:
    """The append-only completion and failure logs of one step."""

    def __init__(self, root: str | Path, step: str):
        self.dir = Path(root) / STATE_DIR / step
        self.completed_path = self.dir / "completed.txt"
        self.failed_path = self.dir / "failed.jsonl"

    def completed(self) -> list[str]:
        """Completed clip ids in completion order, without repeats."""
        return list(dict.fromkeys(read_complete_lines(self.completed_path)))

    def failed(self) -> dict[str, str]:
        """clip id -> last failure reason, for clips that have not completed since."""
        done = set(self.completed())
        out = {}
        for line in read_complete_lines(self.failed_path):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a killed writer
            if rec.get("clip_id") not in done:
                out[rec["clip_id"]] = rec.get("reason", "")
        return out

    def pending(self, clip_ids: Iterable[str], retry_failed: bool = False) -> list[str]:
        """The clips a run processes: not completed, and not failed unless failures are retried."""
        done, failed = set(self.completed()), self.failed()
        return [c for c in dict.fromkeys(clip_ids) if c not in done and (retry_failed or c not in failed)]

    def mark_done(self, clip_id: str) -> None:
        append_line(self.completed_path, clip_id)

    def mark_failed(self, clip_id: str, reason: str) -> None:
        append_line(self.failed_path, json.dumps({"clip_id": clip_id, "reason": reason}, ensure_ascii=False))


@dataclass
class StepSummary:
    step: str
    total: int = 0  # clips considered
    skipped_done: int = 0  # completed in an earlier run
    skipped_failed: int = 0  # failed in an earlier run (rerun with --retry_failed)
    done: int = 0
    failed: int = 0
    counts: Counter = field(default_factory=Counter)  # what the step function returned, summed
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"step": self.step, "total": self.total, "skipped_done": self.skipped_done,
                "skipped_failed": self.skipped_failed, "done": self.done, "failed": self.failed,
                "counts": dict(sorted(self.counts.items())), "seconds": round(self.seconds, 3)}


def run_step(root: str | Path, step: str, clip_ids: Iterable[str], process: Callable[[str], dict | None],
             workers: int = 1, retry_failed: bool = False) -> StepSummary:
    """Run `process` on every clip not completed yet; see the module docstring."""
    state = StepState(root, step)
    clip_ids = list(dict.fromkeys(clip_ids))
    summary = StepSummary(step=step, total=len(clip_ids))
    todo = state.pending(clip_ids, retry_failed)
    done = set(state.completed())
    summary.skipped_done = sum(cid in done for cid in clip_ids)
    summary.skipped_failed = len(clip_ids) - len(todo) - summary.skipped_done
    start = time.monotonic()

    def one(cid: str):
        try:
            return cid, process(cid) or {}, None
        except ClipFailure as err:
            return cid, None, str(err)
        except Exception as err:  # a bug or bad input in one clip must not stop the others
            log.debug("%s: clip %s raised", step, cid, exc_info=True)
            return cid, None, f"{type(err).__name__}: {err}".splitlines()[0]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(todo), desc=step, unit="clip", disable=None) as bar:
        futures = [pool.submit(one, cid) for cid in todo]
        for fut in as_completed(futures):
            cid, counts, reason = fut.result()
            if reason is None:
                state.mark_done(cid)
                summary.done += 1
                summary.counts.update(counts)
            else:
                state.mark_failed(cid, reason)
                summary.failed += 1
                log.warning("%s: clip %s failed: %s", step, cid, reason)
            bar.update(1)
    summary.seconds = time.monotonic() - start
    write_json_atomic(state.dir / "summary.json", summary.as_dict())
    log.info("%s: %s", step, json.dumps(summary.as_dict()))
    return summary


def clips_completed_by(root: str | Path, step: str) -> list[str]:
    """Clips a previous step finished, in sorted order (the order every later step uses)."""
    return sorted(StepState(root, step).completed())


# ---------------------------------------------------------------------------------------------
# CLI plumbing


class _RedactSecrets(logging.Filter):
    """Replaces secrets (the API key) by '***' in every log record, whoever logs it."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            if any(s in msg for s in self.secrets):
                for s in self.secrets:
                    msg = msg.replace(s, "***")
                record.msg, record.args = msg, None
        return True


def setup_logging(level: str = "INFO", secrets: list[str] | None = None) -> None:
    """Log to stderr (unless handlers exist already); every root handler redacts `secrets` (the API
    key) from every message, whichever library logs it."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("httpx", "httpx2", "openai"):  # one line per HTTP request drowns the progress
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    redact = _RedactSecrets(list(secrets or []) + [os.environ.get("OPENAI_API_KEY", "")])
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, _RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(redact)


def parse_args(cls, argv=None):
    """Parse a step's argument dataclass (HfArgumentParser: `--field value`, help from metadata)."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(cls).parse_args_into_dataclasses(args=argv)
    return args


@dataclass
class StepArguments:
    """Flags every per-clip step shares."""

    # a default, so that argument dataclasses can combine this with LLMArguments; checked below
    out: str = field(default="", metadata={"help": "The engine's output root (see `preprocess` for its layout). Required."})
    workers: int = field(default=4, metadata={"help": "Clips processed at once (threads)."})
    retry_failed: bool = field(default=False, metadata={"help": "Process again clips an earlier run recorded as failed."})
    clips: str | None = field(default=None, metadata={"help": "Comma-separated clip ids to restrict the run to."})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ..."})

    def __post_init__(self):
        if not self.out:
            raise ValueError("--out (the engine's output root) is required")

    def select(self, clip_ids: list[str]) -> list[str]:
        if not self.clips:
            return clip_ids
        wanted = {c.strip() for c in self.clips.split(",") if c.strip()}
        return [c for c in clip_ids if c in wanted]
