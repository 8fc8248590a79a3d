"""The resumable, parallel per-clip loop every per-clip step runs: state, Ctrl-C, the verdict.

A step is a function `clip_id -> dict of counts`. `run_step` runs it over clips on `workers`
threads, skips clips listed in `state/<step>/completed.txt`, appends each finished clip there and
each failed one (with its reason) to `state/<step>/failed.jsonl`, shows a progress bar, and writes
`state/<step>/summary.json`. Only the main thread writes the state files.

A clip stopped half-way (SIGKILL, Ctrl-C) is neither completed nor failed, so the next run does it
again from the start; its outputs are written atomically (a stale temporary file is removed when
the clip starts again), so nothing is duplicated. The LLM replies it had received are kept in
`state/<step>/replies/<clip_id>.jsonl` (`preprocess.llm`), so the redo does not pay for them again;
that file is removed once the clip is recorded as completed or failed.

Ctrl-C cancels the clips still queued at once: the main thread records nothing more and raises
`Interrupted` (what was kept, how to resume) without waiting for the clips in flight (their
threads are daemons; what they had written is whole, and their received replies are on disk).

`finish` turns the summary into the run's verdict: it fails (JobFailed, exit 1) when every clip
failed, or more than `--max_skip_fraction` of them, counting clips that failed in an earlier run
and are not retried.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from dift.core.cli import JobFailed
from dift.core.logs import DATE_FORMAT, LOG_FORMAT, show_progress

from . import redact
from .layout import CLIPS_DIR, STATE_DIR, append_line, read_complete_lines, write_json_atomic

log = logging.getLogger(__name__)


# Set on Ctrl-C: the clips still running stop asking for paid work (preprocess.llm checks it).
stopping = threading.Event()


class ClipFailure(Exception):
    """A clip cannot be processed; the message is the reason recorded in failed.jsonl."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a step; the message says what was kept and how to resume."""


class StepState:
    """The append-only completion and failure logs of one step, and its per-clip reply caches."""

    def __init__(self, root: str | Path, step: str):
        self.root = Path(root)
        self.step = step
        self.dir = self.root / STATE_DIR / step
        self.completed_path = self.dir / "completed.txt"
        self.failed_path = self.dir / "failed.jsonl"
        self.replies_dir = self.dir / "replies"

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
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("clip_id"), str):
                log.warning("%s: ignored a line that is not a failure record: %.80s", self.failed_path, line)
                continue
            if rec["clip_id"] not in done:
                out[rec["clip_id"]] = str(rec.get("reason", ""))
        return out

    def pending(self, clip_ids: Iterable[str], retry_failed: bool = False) -> list[str]:
        """The clips a run processes: not completed, and not failed unless failures are retried."""
        done, failed = set(self.completed()), self.failed()
        return [c for c in dict.fromkeys(clip_ids) if c not in done and (retry_failed or c not in failed)]

    def replies_path(self, clip_id: str) -> Path:
        """The clip's cache of received LLM replies (kept while the clip is unfinished)."""
        return self.replies_dir / f"{clip_id}.jsonl"

    def mark_done(self, clip_id: str) -> None:
        append_line(self.completed_path, clip_id)
        self.replies_path(clip_id).unlink(missing_ok=True)

    def mark_failed(self, clip_id: str, reason: str) -> None:
        reason = redact.scrub(reason)
        append_line(self.failed_path, json.dumps({"clip_id": clip_id, "reason": reason}, ensure_ascii=False))
        # a retry (--retry_failed) asks the LLM again: the replies that failed the clip are not replayed
        self.replies_path(clip_id).unlink(missing_ok=True)


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
    first_failure: str = ""  # "clip: reason" of one failed clip, for the one-line verdict
    interrupted: bool = False

    def as_dict(self) -> dict:
        return {"step": self.step, "total": self.total, "skipped_done": self.skipped_done,
                "skipped_failed": self.skipped_failed, "done": self.done, "failed": self.failed,
                "counts": dict(sorted(self.counts.items())), "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted}

    def line(self) -> str:
        """One line for people: what was done, what failed and where the reasons are."""
        done = self.done + self.skipped_done
        text = f"{self.step}: {done} of {self.total} clips done ({self.skipped_done} in an earlier run)"
        failed = self.failed + self.skipped_failed
        if failed:
            text += (f", {failed} failed ({self.skipped_failed} in an earlier run, not retried without "
                     f"--retry_failed; reasons in state/{self.step}/failed.jsonl)")
        if self.counts:
            text += ", " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return text


def _remove_stale_temporaries(clip_dir: Path) -> None:
    """Temporary files and folders a killed writer left in a clip's folder: every atomic writer
    (layout's, dift.core.frames') names its temporaries with a leading dot, nothing else does."""
    if not clip_dir.is_dir():
        return
    for path in sorted(clip_dir.rglob(".*"), key=lambda p: len(p.parts)):
        if not path.exists():  # inside a folder removed just before
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _worker(todo: queue.Queue, results: queue.Queue, stop: threading.Event, step: str, root: Path,
            process: Callable[[str], dict | None]) -> None:
    while not stop.is_set():
        try:
            cid = todo.get_nowait()
        except queue.Empty:
            return
        try:
            _remove_stale_temporaries(root / CLIPS_DIR / cid)
            results.put((cid, process(cid) or {}, None))
        except ClipFailure as err:
            results.put((cid, None, str(err)))
        except Exception as err:  # a bug or bad input in one clip must not stop the others
            log.debug("%s: clip %s raised", step, cid, exc_info=True)
            results.put((cid, None, f"{type(err).__name__}: {err}".splitlines()[0]))


def run_step(root: str | Path, step: str, clip_ids: Iterable[str], process: Callable[[str], dict | None],
             workers: int = 1, retry_failed: bool = False) -> StepSummary:
    """Run `process` on every clip not completed yet; see the module docstring."""
    root = Path(root)
    state = StepState(root, step)
    clip_ids = list(dict.fromkeys(clip_ids))
    summary = StepSummary(step=step, total=len(clip_ids))
    todo_ids = state.pending(clip_ids, retry_failed)
    done = set(state.completed())
    summary.skipped_done = sum(cid in done for cid in clip_ids)
    summary.skipped_failed = len(clip_ids) - len(todo_ids) - summary.skipped_done
    for cid in done & set(clip_ids):  # a kill between marking a clip done and removing its cache
        state.replies_path(cid).unlink(missing_ok=True)
    earlier = {} if retry_failed else state.failed()
    failed_now: dict[str, str] = {}
    stopping.clear()
    log.info("%s: %d clips, %d done and %d failed in an earlier run, %d to do", step, summary.total,
             summary.skipped_done, summary.skipped_failed, len(todo_ids))
    start = time.monotonic()

    todo: queue.Queue = queue.Queue()
    for cid in todo_ids:
        todo.put(cid)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    threads = [threading.Thread(target=_worker, args=(todo, results, stop, step, root, process), daemon=True,
                                name=f"{step}-{i}") for i in range(min(max(1, workers), len(todo_ids)))]
    bar = tqdm(total=len(todo_ids), desc=step, unit="clip", disable=not show_progress())
    try:
        for t in threads:
            t.start()
        for _ in range(len(todo_ids)):
            while True:  # a timeout keeps the wait interruptible by Ctrl-C everywhere
                try:
                    cid, counts, reason = results.get(timeout=0.2)
                    break
                except queue.Empty:
                    continue
            if reason is None:
                state.mark_done(cid)
                summary.done += 1
                summary.counts.update(counts)
            else:
                state.mark_failed(cid, reason)
                summary.failed += 1
                failed_now[cid] = redact.scrub(reason)
                log.warning("%s: clip %s failed: %s", step, cid, reason)
            bar.update(1)
    except KeyboardInterrupt:
        stop.set()  # the queued clips are cancelled; the ones in flight are abandoned (daemon threads)
        stopping.set()
        summary.interrupted = True
        summary.seconds = time.monotonic() - start
        write_json_atomic(state.dir / "summary.json", summary.as_dict())
        kept = summary.skipped_done + summary.done
        raise Interrupted(
            f"{kept} of {summary.total} clips are done and kept ({state.completed_path}); the LLM replies received "
            f"for unfinished clips are kept in {state.replies_dir} and reused; rerun the same command to continue"
        ) from None
    finally:
        bar.close()
    # the verdict's example reason: the first clip (in clip order) that failed in this run, else earlier
    failures = failed_now or earlier
    summary.first_failure = next((f"{cid}: {failures[cid]}" for cid in clip_ids if cid in failures), "")
    summary.seconds = time.monotonic() - start
    write_json_atomic(state.dir / "summary.json", summary.as_dict())
    log.info("%s", summary.line())
    return summary


def finish(summary: StepSummary, max_skip_fraction: float | None = None) -> int:
    """Exit code 0, or JobFailed when too many clips failed (see the module docstring)."""
    failed = summary.failed + summary.skipped_failed
    if summary.total and failed:
        fraction = failed / summary.total
        too_many = failed == summary.total if max_skip_fraction is None else fraction > max_skip_fraction
        if too_many:
            limit = "every clip failed" if max_skip_fraction is None else \
                f"{failed} of {summary.total} clips failed, more than --max_skip_fraction {max_skip_fraction:g}"
            first = f"; first: {summary.first_failure}" if summary.first_failure else ""
            raise JobFailed(f"{summary.step}: {limit} ({failed} of {summary.total}; reasons in "
                            f"state/{summary.step}/failed.jsonl{first})")
    return 0


def clips_completed_by(root: str | Path, step: str) -> list[str]:
    """Clips a previous step finished, in sorted order (the order every later step uses)."""
    return sorted(StepState(root, step).completed())


def select_clips(candidates: list[str], args, step: str, previous: str, root: Path) -> list[str]:
    """The clips a step works on: those `previous` finished, restricted to --clips; JobFailed if none."""
    clips = args.select(candidates)
    if clips:
        return clips
    if not candidates:
        raise JobFailed(f"{step}: no clip has finished the {previous} step in {root} "
                        f"(run python -m preprocess {previous} first)")
    raise JobFailed(f"{step}: --clips {args.clips}: none of these clips has finished the {previous} step in {root}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record arrives (the redacting wrapper the command line
    installs, a test's capture), never to a stream closed since."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level: str = "INFO") -> None:
    """Console logging to stderr in the project's format (`dift.core.logs`: the same handler, which
    that module's setup would reuse), HTTP chatter silenced, and every handler scrubbing secrets.
    (Not `dift.core.logs.setup_logging` itself: it imports torch, which the LLM steps never need.)"""
    root = logging.getLogger()
    if not any(getattr(h, "_fourdthinker", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT))
        handler._fourdthinker = True
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai"):  # one line per HTTP request drowns the progress
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    redact.guard_handlers()
