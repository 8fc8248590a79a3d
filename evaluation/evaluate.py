"""One DSR evaluation run (what `python -m evaluation.dsr_eval` does after parsing its flags):
load the benchmark and the checkpoint, answer the questions of this process's shard in batches,
append the records, then (rank 0) merge the shards, write the summary and print the table.

Frames come at 1 fps from the on-disk frame cache (`dift.core.frames`; a thread pool prepares
upcoming batches while the model runs); answers from latent-aware generation
(`dift.core.generation.answer_questions`); letters from `dift.core.extraction`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dift.core.checkpoint import load_latent_model, resolve_model_path
from dift.core.cli import JobFailed, UsageError
from dift.core.decoding import SamplingConfig
from dift.core.decoding import describe as describe_decoding
from dift.core.distributed import ProcessLayout
from dift.core.extraction import EVAL_LETTERS, extract_answer, score_answer
from dift.core.frames import MAX_FRAMES, FrameCache, VideoDecodeError, load_video_frames, prefetch_ordered
from dift.core.generation import GenerationResult, Question, answer_questions
from dift.core.logs import show_progress

from .benchmark import BenchmarkItem, load_benchmark
from .dsr_eval import EvalArguments
from .metrics import aggregate, format_report
from .results import (
    ResultsWriter,
    atomic_write_json,
    completed_indices,
    merge_results,
    part_path,
    results_path,
    run_config_path,
    summary_path,
)

log = logging.getLogger("evaluation.dsr_eval")
RUNNING_ACCURACY_EVERY = 10
MAX_ERROR_CHARS = 2000
# With the engine, questions are handed over in chunks of this many batches: its --batch_size slots are
# refilled within a chunk as answers finish (continuous batching), and results are written per chunk.
ENGINE_BATCHES_PER_CHUNK = 4


class SkipQuestion(Exception):
    """A question that cannot be evaluated (counted under `reason`, in no accuracy)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Processes: one, or a data-parallel group under torchrun


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        layout = ProcessLayout.from_env()
        return cls(layout.rank, layout.world_size, layout.local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, timeout_s: int) -> None:
        # gloo: only small objects cross processes (file name, skip counts) and a barrier before
        # the merge; it works on CPU-only machines and next to any GPU backend.
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))

    def broadcast(self, obj):
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """`obj` of every rank, after all ranks got here (so it doubles as the barrier)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Pieces of a run


def resolve_device(device: str | None, ranks: Ranks) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and ranks.world_size > 1:
        device = f"cuda:{ranks.local_rank}"
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def default_output_file() -> Path:
    """./results/dsr_eval_<timestamp>.jsonl in the working directory (as the original, not inside the package)."""
    return Path("results") / f"dsr_eval_{time.strftime('%Y%m%d_%H%M%S')}.jsonl"


def run_settings(args: EvalArguments, model_path: str, latent_size: int, dtype: torch.dtype,
                 sampling: SamplingConfig, sources: dict[str, str]) -> dict:
    """The settings that decide a results file's contents (checked when resuming), with the
    effective decoding and where its inherited fields came from."""
    return {"model_path": str(Path(model_path).resolve()), "benchmark_path": str(Path(args.benchmark_path).resolve()),
            "video_root": str(Path(args.video_root).resolve()), "seed": args.seed,
            "sampling": asdict(sampling), "sampling_sources": sources, "latent_size": latent_size,
            "latent_ablation": args.latent_ablation, "dtype": str(dtype).removeprefix("torch.")}


def check_run_settings(path: Path, settings: dict, write: bool) -> None:
    """Refuse to resume a results file written with other settings; record them for a new one."""
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [k for k in settings if saved.get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise UsageError(f"{path}: the results were written with {k}={saved.get(k)!r}, this run has "
                             f"{settings[k]!r}; use another --output_file (or delete the old results)")
    elif write:
        atomic_write_json(path, settings)


def prepare_frames(item: BenchmarkItem, video_root: str, cache: FrameCache) -> list:
    """The frames the model sees for a question; SkipQuestion when the original would skip it."""
    path = item.video_path(video_root)
    if path is None:
        raise SkipQuestion("no_video_id", "no video id")
    try:
        return load_video_frames(path, cache, MAX_FRAMES)
    except FileNotFoundError as err:
        raise SkipQuestion("missing_video", str(err)) from None
    except VideoDecodeError as err:
        raise SkipQuestion("decode_failed", str(err)) from None
    except Exception as err:  # any other failure while preparing: skipped, as the original does
        raise SkipQuestion("prepare_failed", f"{type(err).__name__}: {err}") from None


def make_record(item: BenchmarkItem, video_root: str, raw: str, error: bool = False,
                result: GenerationResult | None = None) -> dict:
    """One results line: the spec's fields, then whether inference failed, finished, token count."""
    pred = "" if error else extract_answer(raw, EVAL_LETTERS)
    return {"index": item.index, "video_id": item.video_id, "video_path": str(item.video_path(video_root)),
            "question": item.question_text, "gt": item.gt, "pred": pred, "answer": pred, "raw": raw,
            "hit": score_answer(pred, item.gt), "subtask_type": item.subtask_type, "error": error,
            "finished": bool(result.finished) if result is not None else False, "num_options": len(item.options),
            "num_tokens": len(result.token_ids) if result is not None else 0}


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def answer_batch(loaded, batch: list[tuple[BenchmarkItem, list]], args: EvalArguments,
                 sampling: SamplingConfig) -> list[dict]:
    """Records of one batch. A batch that fails is retried question by question (a question's
    answer does not depend on its batch); a question that fails alone is recorded as an error."""
    questions = [Question(visual=frames, question=item.question_text, seed=args.seed + item.index)
                 for item, frames in batch]
    try:
        results = dict(answer_questions(loaded, questions, sampling, batch_size=args.batch_size,
                                        latent_ablation=args.latent_ablation, progress=False, engine=args.engine,
                                        compile=args.compile))
        return [make_record(item, args.video_root, results[i].text, result=results[i])
                for i, (item, _) in enumerate(batch)]
    except Exception as err:
        if _is_oom(err) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(batch) > 1:
            log.warning("batch of %d failed (%s: %s); retrying its questions one by one",
                        len(batch), type(err).__name__, str(err)[:200])
            return [rec for one in batch for rec in answer_batch(loaded, [one], args, sampling)]
        item = batch[0][0]
        message = f"{type(err).__name__}: {err}"[:MAX_ERROR_CHARS]
        log.error("question %d: inference failed: %s", item.index, message.splitlines()[0] if message else "")
        return [make_record(item, args.video_root, message, error=True)]


def evaluate_shard(loaded, items: list[BenchmarkItem], args: EvalArguments, sampling: SamplingConfig,
                   writer: ResultsWriter, show_progress: bool) -> Counter:
    """Evaluate `items` (in order), appending each batch's records; returns the skip counts."""
    cache = FrameCache(args.frame_root)
    skipped: Counter = Counter()
    seen = hits = 0
    bar = tqdm(total=len(items), desc="DSR eval", unit="q", disable=not show_progress)

    def run(batch):
        nonlocal seen, hits
        records = answer_batch(loaded, batch, args, sampling)
        writer.write_batch(records)
        for rec in records:
            seen += 1
            hits += rec["hit"]
            log.info("[%d] %s gt=%s pred=%s %s", rec["index"], rec["subtask_type"], rec["gt"],
                     rec["pred"] or "-", "ERROR" if rec["error"] else ("hit" if rec["hit"] else "miss"))
            if seen % RUNNING_ACCURACY_EVERY == 0:
                log.info("running accuracy: %.2f%% (%d/%d)", 100 * hits / seen, hits, seen)
        bar.update(len(records))
        bar.set_postfix(acc=f"{hits / seen:.3f}", skipped=sum(skipped.values()))

    chunk = args.batch_size * (ENGINE_BATCHES_PER_CHUNK if args.engine else 1)  # questions per answer_batch
    batch: list[tuple[BenchmarkItem, list]] = []
    try:
        for done in prefetch_ordered(lambda it: prepare_frames(it, args.video_root, cache), items,
                                     num_workers=args.num_workers, max_ahead=2 * chunk):
            if done.error is not None:
                reason = done.error.reason if isinstance(done.error, SkipQuestion) else "prepare_failed"
                skipped[reason] += 1
                log.warning("skipping question %d (%s): %s", done.item.index, reason, done.error)
                bar.update(1)
                bar.set_postfix(acc=f"{hits / max(seen, 1):.3f}", skipped=sum(skipped.values()))
                continue
            batch.append((done.item, done.value))
            if len(batch) == chunk:
                run(batch)
                batch = []
        if batch:
            run(batch)
    finally:
        bar.close()
    log.info("frames: %d videos decoded, %d from the cache", cache.decoded, cache.hits)
    return skipped


def summarize(records: list[dict], items: list[BenchmarkItem], skipped: Counter, settings: dict,
              results_file: Path, world_size: int) -> dict:
    """The summary JSON: the original's fields over the loaded rows, then what this run used."""
    wanted = {it.index for it in items}
    records = [r for r in records if r["index"] in wanted]
    summary = aggregate(records, total=len(items), skipped=len(items) - len(records))
    summary.update({
        "skipped_by_reason": dict(sorted(skipped.items())),
        "inference_errors": sum(1 for r in records if r.get("error")),
        "latent_ablation": settings["latent_ablation"],
        "latent_size": settings["latent_size"],
        "seed": settings["seed"],
        "sampling": settings["sampling"],
        "sampling_sources": settings["sampling_sources"],
        "model_path": settings["model_path"],
        "benchmark_path": settings["benchmark_path"],
        "results_file": str(results_file),
        "world_size": world_size,
    })
    return summary


def check_skipped(summary: dict, max_skip_fraction: float | None) -> None:
    """JobFailed when too many questions were skipped (default: all of them)."""
    total, skipped = summary["total"], summary["skipped"]
    reasons = ", ".join(f"{n} {reason}" for reason, n in summary["skipped_by_reason"].items())
    if max_skip_fraction is None:
        if total and skipped == total:
            raise JobFailed(f"every one of the {total} questions was skipped ({reasons}); check --video_root")
    elif total and skipped / total > max_skip_fraction:
        raise JobFailed(f"{skipped} of {total} questions skipped ({reasons}), more than --max_skip_fraction "
                        f"{max_skip_fraction}")


def run_eval(args: EvalArguments) -> dict | None:
    """Evaluate, resume or finish a run; returns the summary on rank 0 (None on other ranks)."""
    ranks = Ranks.from_env()
    ranks.init(args.dist_timeout_s)
    if ranks.is_main:
        log.info("DSR evaluation, %s", ProcessLayout.from_env().describe())
    try:
        items = load_benchmark(args.benchmark_path, args.max_samples)
        output = ranks.broadcast(results_path(args.output_file) if args.output_file else default_output_file())
        output.parent.mkdir(parents=True, exist_ok=True)
        done = completed_indices(output, retry_errors=args.retry_errors)
        todo = [it for it in items if it.index % ranks.world_size == ranks.rank and it.index not in done]
        log.info("rank %d/%d: %d questions loaded, %d already done, %d to evaluate -> %s", ranks.rank,
                 ranks.world_size, len(items), len(done & {it.index for it in items}), len(todo), output)

        device = resolve_device(args.device, ranks)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no CUDA device is visible (use --device cpu)")
        dtype = resolve_dtype(args.dtype, device)
        model_path = resolve_model_path(args.model_path, args.cache_dir, flag="--model_path")
        loaded = load_latent_model(model_path, dtype=dtype, device=device, latent_size=args.latent_size)
        sampling, sources = args.sampling(model_path)
        if ranks.is_main:
            log.info(describe_decoding(sampling, sources))
        settings = run_settings(args, model_path, loaded.latent.latent_size, dtype, sampling, sources)
        check_run_settings(run_config_path(output), settings, write=ranks.is_main)

        with logging_redirect_tqdm(), ResultsWriter(part_path(output, ranks.rank, ranks.world_size)) as writer:
            skipped = evaluate_shard(loaded, todo, args, sampling, writer, show_progress=show_progress(ranks.is_main))
        all_skipped = sum(ranks.gather(skipped), Counter())  # every rank is done past this point
        if not ranks.is_main:
            return None
        records = merge_results(output)
        summary = summarize(records, items, all_skipped, settings, output, ranks.world_size)
        atomic_write_json(summary_path(output), summary)
        print(format_report(summary), flush=True)
        log.info("results: %s; summary: %s", output, summary_path(output))
        check_skipped(summary, args.max_skip_fraction)
        return summary
    finally:
        ranks.close()
