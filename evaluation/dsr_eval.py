"""Evaluate a latent-imagery checkpoint on the DSR benchmark: batched, in file order, resumable,
data-parallel.

    python -m evaluation.dsr_eval --model_path CKPT --benchmark_path benchmark.parquet \\
        --video_root DIR --output_file results/run.jsonl [--greedy] [--batch_size 8]
    torchrun --nproc_per_node 2 -m evaluation.dsr_eval ...same flags...   # one shard per process

Reads the benchmark (`evaluation.benchmark`), takes each video's frames at 1 fps from the on-disk
frame cache (`dift.core.frames`; a thread pool prepares upcoming batches while the model runs),
answers in batches with latent-aware generation (`dift.core.generation.answer_questions`), scores with
`dift.core.extraction` and writes:
- the results JSONL, one line per evaluated question, appended and fsynced as each batch finishes
  (in a data-parallel run each rank appends to its own part file; rank 0 merges them in file order);
- `<name>_summary.json` (atomically) and the printed accuracy table (`evaluation.metrics`);
- `<name>_run.json`: the settings that decide the outputs; resuming with other settings is refused.
Rerunning with the same `--output_file` resumes: questions already in the results are skipped.

Differences from the original (see the README): questions run in batches and in file order, each
with its own seed (`--seed` + index), so an answer does not depend on thread timing or the number
of processes, nor, under greedy decoding, on batch composition (sampled answers can still differ
between batch sizes where rows of different batch shapes get logits that differ in the last float
bits, which flips a draw from a nearly flat distribution); every sampling field is explicit (the original inherited top_k 1
and repetition penalty 1.05 from the checkpoint's generation_config.json); frames are cached, not
re-extracted on every run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import HfArgumentParser

from dift.core.distributed import ProcessLayout
from dift.core.extraction import EVAL_LETTERS, extract_answer, score_answer
from dift.core.frames import MAX_FRAMES, FrameCache, VideoDecodeError, load_video_frames, prefetch_ordered
from dift.core.generation import (
    LATENT_ABLATIONS,
    GenerationResult,
    Question,
    SamplingConfig,
    answer_questions,
)

from .benchmark import BenchmarkItem, load_benchmark
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
DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"
RUNNING_ACCURACY_EVERY = 10
MAX_ERROR_CHARS = 2000


@dataclass
class EvalArguments:
    # --- what to evaluate (the original's flags and defaults)
    model_path: str = field(default="./model/dift/checkpoints",
                            metadata={"help": "checkpoint folder (or a Hub id, downloaded into --cache_dir)"})
    benchmark_path: str = field(default="./raw_data/DSR_Suite-Data/benchmark.parquet",
                                metadata={"help": "benchmark file: .parquet, .json or .jsonl"})
    video_root: str = field(default="./raw_data/DSR-data/bmk_video", metadata={"help": "folder of <videoID>.mp4"})
    cache_dir: str = field(default="./cache", metadata={"help": "Hugging Face download cache (Hub ids only)"})
    output_file: str | None = field(default=None, metadata={
        "help": "results JSONL (extension forced to .jsonl); default evaluation/results/dsr_eval_<timestamp>.jsonl. "
                "Rerun with the same file to resume."})
    frame_root: str | None = field(default=None, metadata={
        "help": "frame cache root (default: $FOURDTHINKER_FRAME_CACHE, else <tmp>/fourdthinker_frames)"})
    num_workers: int = field(default=4, metadata={"help": "threads preparing frames of upcoming batches"})
    max_samples: int | None = field(default=None, metadata={"help": "evaluate only the first N benchmark rows"})
    latent_size: int | None = field(default=None, metadata={"help": "latent tokens per imagined image (default: config)"})
    # --- sampling (the original's defaults; every field explicit)
    seed: int = field(default=42, metadata={"help": "question i is sampled with seed + i"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (ignored with --greedy)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass (ignored with --greedy)"})
    top_k: int = field(default=0, metadata={"help": "0 = off (the original silently inherited top_k 1)"})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "1.0 = off (the original silently inherited 1.05)"})
    max_new_tokens: int = field(default=2048, metadata={"help": "generated tokens per answer at most "
                                                                "(batch_dsr_eval.sh: 8192)"})
    greedy: bool = field(default=False, metadata={"help": "greedy decoding instead of sampling"})
    # --- ours
    batch_size: int = field(default=8, metadata={"help": "questions per generation batch"})
    latent_ablation: str = field(default="none", metadata={
        "help": "what is fed inside latent blocks: the model's hidden states (none), zeros, or matched-norm noise",
        "choices": list(LATENT_ABLATIONS)})
    device: str | None = field(default=None, metadata={
        "help": "default cuda (cuda:LOCAL_RANK under torchrun) if available, else cpu"})
    dtype: str = field(default="auto", metadata={
        "help": "model dtype; auto = bfloat16 on CUDA (as the original), float32 on CPU",
        "choices": ["auto", "bfloat16", "float16", "float32"]})
    retry_errors: bool = field(default=False, metadata={
        "help": "when resuming, answer again the questions recorded as inference errors (e.g. out of memory)"})
    dist_timeout_s: int = field(default=86400, metadata={
        "help": "data-parallel: how long rank 0 waits for the other ranks before merging"})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"--num_workers must be >= 0, got {self.num_workers}")
        if self.latent_ablation not in LATENT_ABLATIONS:
            raise ValueError(f"--latent_ablation must be one of {LATENT_ABLATIONS}, got {self.latent_ablation!r}")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, do_sample=not self.greedy,
                              temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              repetition_penalty=self.repetition_penalty)


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


def resolve_model_path(model_path: str, cache_dir: str) -> str:
    """A local folder as is; anything else is taken for a Hub id and downloaded into `cache_dir`."""
    if Path(model_path).is_dir():
        return model_path
    if model_path.startswith((".", "/", "~")) or model_path.count("/") != 1:
        raise FileNotFoundError(f"checkpoint folder not found: {model_path}")
    from huggingface_hub import snapshot_download

    return snapshot_download(model_path, cache_dir=cache_dir)


def default_output_file() -> Path:
    return DEFAULT_RESULTS_DIR / f"dsr_eval_{time.strftime('%Y%m%d_%H%M%S')}.jsonl"


def run_settings(args: EvalArguments, model_path: str, latent_size: int, dtype: torch.dtype) -> dict:
    """The settings that decide a results file's contents (checked when resuming)."""
    return {"model_path": str(Path(model_path).resolve()), "benchmark_path": str(Path(args.benchmark_path).resolve()),
            "video_root": str(Path(args.video_root).resolve()), "seed": args.seed,
            "sampling": asdict(args.sampling()), "latent_size": latent_size,
            "latent_ablation": args.latent_ablation, "dtype": str(dtype).removeprefix("torch.")}


def check_run_settings(path: Path, settings: dict, write: bool) -> None:
    """Refuse to resume a results file written with other settings; record them for a new one."""
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [k for k in settings if saved.get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise SystemExit(f"{path}: the results were written with {k}={saved.get(k)!r}, this run has "
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
            "finished": bool(result.finished) if result is not None else False,
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
        results = dict(answer_questions(loaded, questions, sampling, batch_size=len(questions),
                                        latent_ablation=args.latent_ablation, progress=False))
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


def evaluate_shard(loaded, items: list[BenchmarkItem], args: EvalArguments, writer: ResultsWriter,
                   show_progress: bool) -> Counter:
    """Evaluate `items` (in order), appending each batch's records; returns the skip counts."""
    sampling = args.sampling()
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

    batch: list[tuple[BenchmarkItem, list]] = []
    try:
        for done in prefetch_ordered(lambda it: prepare_frames(it, args.video_root, cache), items,
                                     num_workers=args.num_workers, max_ahead=2 * args.batch_size):
            if done.error is not None:
                reason = done.error.reason if isinstance(done.error, SkipQuestion) else "prepare_failed"
                skipped[reason] += 1
                log.warning("skipping question %d (%s): %s", done.item.index, reason, done.error)
                bar.update(1)
                bar.set_postfix(acc=f"{hits / max(seen, 1):.3f}", skipped=sum(skipped.values()))
                continue
            batch.append((done.item, done.value))
            if len(batch) == args.batch_size:
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
        "model_path": settings["model_path"],
        "benchmark_path": settings["benchmark_path"],
        "results_file": str(results_file),
        "world_size": world_size,
    })
    return summary


# ---------------------------------------------------------------------------------------------
# The command


def run_eval(args: EvalArguments) -> dict | None:
    """Evaluate, resume or finish a run; returns the summary on rank 0 (None on other ranks)."""
    from dift.core.checkpoint import load_latent_model

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
        dtype = resolve_dtype(args.dtype, device)
        model_path = resolve_model_path(args.model_path, args.cache_dir)
        loaded = load_latent_model(model_path, dtype=dtype, device=device, latent_size=args.latent_size)
        settings = run_settings(args, model_path, loaded.latent.latent_size, dtype)
        check_run_settings(run_config_path(output), settings, write=ranks.is_main)

        with logging_redirect_tqdm(), ResultsWriter(part_path(output, ranks.rank, ranks.world_size)) as writer:
            skipped = evaluate_shard(loaded, todo, args, writer, show_progress=ranks.is_main)
        all_skipped = sum(ranks.gather(skipped), Counter())  # every rank is done past this point
        if not ranks.is_main:
            return None
        records = merge_results(output)
        summary = summarize(records, items, all_skipped, settings, output, ranks.world_size)
        atomic_write_json(summary_path(output), summary)
        print(format_report(summary), flush=True)
        log.info("results: %s; summary: %s", output, summary_path(output))
        return summary
    finally:
        ranks.close()


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    parser = HfArgumentParser(EvalArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {os.environ.get('RANK', 0)}] %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    return run_eval(args)


def cli() -> None:
    """`python -m evaluation.dsr_eval`: bad input ends with one line naming what to fix, not a traceback."""
    from dift.core.tokens import LatentCheckpointError

    from .benchmark import BenchmarkError
    from .results import ResultsFileError

    try:
        main()
    except (FileNotFoundError, BenchmarkError, ResultsFileError, LatentCheckpointError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    cli()
