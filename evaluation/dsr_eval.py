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
bits, which flips a draw from a nearly flat distribution); frames are cached, not re-extracted on every
run. Decoding is the original's: fields not given on the command line (top_k, repetition_penalty)
come from the checkpoint's generation_config.json (Qwen2.5-VL's: top_k 1, penalty 1.05, i.e. greedy
with a penalty, which is how the published numbers were made); `--generation_config flags` uses only
the flags. The effective values are logged and stored in `<name>_run.json`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dift.core.cli import add_negative_flag, build_parser, parse_cli_args, require_path, run_cli
from dift.core.decoding import LATENT_ABLATIONS, SamplingConfig, resolve_sampling
from dift.core.decoding import MODES as DECODING_MODES
from dift.core.logs import setup_logging

PROG = "python -m evaluation.dsr_eval"


@dataclass
class EvalArguments:
    # --- what to evaluate (the original's flags and defaults)
    model_path: str = field(default="./model/dift/checkpoints", metadata={
        "help": "checkpoint folder, or a Hugging Face Hub id (downloaded into --cache_dir)",
        "aliases": ["--model_name_or_path"]})
    benchmark_path: str = field(default="./raw_data/DSR_Suite-Data/benchmark.parquet",
                                metadata={"help": "benchmark file: .parquet, .json or .jsonl"})
    video_root: str = field(default="./raw_data/DSR-data/bmk_video", metadata={"help": "folder of <videoID>.mp4"})
    cache_dir: str = field(default="./cache", metadata={"help": "Hugging Face download cache (Hub ids only)"})
    output_file: str | None = field(default=None, metadata={
        "help": "results JSONL (extension forced to .jsonl); default ./results/dsr_eval_<timestamp>.jsonl. "
                "Rerun with the same file to resume."})
    frame_root: str | None = field(default=None, metadata={
        "help": "frame cache root (default: $FOURDTHINKER_FRAME_CACHE, else <tmp>/fourdthinker_frames)"})
    num_workers: int = field(default=4, metadata={"help": "threads preparing frames of upcoming batches"})
    max_samples: int | None = field(default=None, metadata={"help": "evaluate only the first N benchmark rows"})
    max_skip_fraction: float | None = field(default=None, metadata={
        "help": "fail (exit 1) when more than this fraction of the questions is skipped (missing or undecodable "
                "videos); default: fail only when every question was skipped"})
    latent_size: int | None = field(default=None, metadata={"help": "latent tokens per imagined image (default: config)"})
    # --- decoding (the original's flags and defaults; see --generation_config)
    seed: int = field(default=42, metadata={"help": "question i is sampled with seed + i"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (ignored with --greedy)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass (ignored with --greedy)"})
    top_k: int | None = field(default=None, metadata={
        "help": "top-k filtering, 0 = off; default: the checkpoint's generation_config.json, as the original "
                "(Qwen2.5-VL's: 1, i.e. greedy)"})
    repetition_penalty: float | None = field(default=None, metadata={
        "help": "1.0 = off; default: the checkpoint's generation_config.json, as the original (Qwen2.5-VL's: 1.05)"})
    max_new_tokens: int = field(default=2048, metadata={"help": "generated tokens per answer at most "
                                                                "(batch_dsr_eval.sh: 8192)"})
    generation_config: str = field(default="checkpoint", metadata={
        "help": "checkpoint: decoding fields not given here come from the checkpoint's generation_config.json, "
                "as in the original (reproduces the published numbers); flags: only these flags (top_k off, "
                "penalty 1.0 unless given), for true sampling", "choices": list(DECODING_MODES)})
    greedy: bool = field(default=False, metadata={"help": "greedy decoding instead of sampling"})
    # --- ours
    batch_size: int = field(default=8, metadata={"help": "questions per generation batch",
                                                 "aliases": ["--per_device_eval_batch_size"]})
    latent_ablation: str = field(default="none", metadata={
        "help": "what is fed inside latent blocks: the model's hidden states (none), zeros, or matched-norm noise",
        "choices": list(LATENT_ABLATIONS)})
    engine: bool = field(default=True, metadata={
        "help": "generate with the engine (static KV slots, continuous batching: a finished answer's slot takes "
                "the next question); --no_engine: the reference loop, one batch at a time (same answers)"})
    compile: bool | None = field(default=None, metadata={
        "help": "compile the engine's decode step (torch.compile; CUDA graphs on CUDA); default: on for CUDA, "
                "off on CPU, where it gains little"})
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
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be >= 1, got {self.max_samples}")
        if self.max_skip_fraction is not None and not 0 <= self.max_skip_fraction <= 1:
            raise ValueError(f"--max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature} (use --greedy for greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"--top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ValueError(f"--repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_workers < 0:
            raise ValueError(f"--num_workers must be >= 0, got {self.num_workers}")
        if self.latent_ablation not in LATENT_ABLATIONS:
            raise ValueError(f"--latent_ablation must be one of {LATENT_ABLATIONS}, got {self.latent_ablation!r}")

    def check_paths(self) -> None:
        """UsageError for a path flag that names nothing (before any model is loaded)."""
        require_path("--model_path", self.model_path, "model")
        require_path("--benchmark_path", self.benchmark_path, "file")
        require_path("--video_root", self.video_root, "dir")

    def sampling(self, model_path: str | None) -> tuple[SamplingConfig, dict[str, str]]:
        """The effective decoding and where each inherited field came from (`dift.core.decoding`)."""
        return resolve_sampling(max_new_tokens=self.max_new_tokens, greedy=self.greedy, temperature=self.temperature,
                                top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                                model_path=model_path, mode=self.generation_config)


def make_parser():
    return add_negative_flag(build_parser(EvalArguments, prog=PROG, description=__doc__.split("\n\n")[0]),
                             "compile", "do not compile the decode step")


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    (args,) = parse_cli_args(make_parser(), argv)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    """Parse the flags and run; returns the summary on rank 0 (None on other ranks)."""
    args = parse_args(argv)
    args.check_paths()
    # Every rank logs (its lines carry its rank): each says what its shard holds.
    setup_logging(fmt=f"%(asctime)s [rank {os.environ.get('RANK', 0)}] %(message)s")
    from .evaluate import run_eval  # torch and the model code: after the flags are read

    return run_eval(args)


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message names the file/row/field at fault: exit 1 with that line."""
    from dift.core.decoding import GenerationConfigError
    from dift.core.frames import VideoDecodeError
    from dift.core.tokens import LatentCheckpointError

    from .benchmark import BenchmarkError
    from .results import ResultsFileError

    return (FileNotFoundError, BenchmarkError, ResultsFileError, LatentCheckpointError, GenerationConfigError,
            VideoDecodeError)


def cli(argv: list[str] | None = None) -> None:
    """`python -m evaluation.dsr_eval`, with the project's exit codes (dift.core.cli)."""
    run_cli(PROG, lambda: main(argv), failures=_input_errors,
            interrupted="the answered questions are in the results file; rerun the same command to continue")


if __name__ == "__main__":
    cli()
