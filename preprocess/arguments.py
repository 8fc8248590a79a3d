"""The flags of every data-engine step, and the table of steps the command line dispatches to.

Light on purpose: `python -m preprocess <step> --help` imports only this module (no torch, SAM3,
OpenCV or PyAV) and answers in well under a second. Each step module's `run(...)` takes the parsed
dataclasses; a value no step can use raises ValueError here, which the command line turns into a
usage error (exit 2) naming the flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from dift.core.cli import build_parser, parse_cli_args
from dift.core.frames import MAX_FRAMES

DEFAULT_LLM_MODEL = "gpt-4.1"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _at_least(flag: str, value, low) -> None:
    if value < low:
        raise ValueError(f"{flag} must be >= {low}, got {value}")


def _fraction(flag: str, value) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{flag} must be in [0, 1], got {value}")


@dataclass(kw_only=True)
class StepArguments:
    """Flags every per-clip step shares."""

    out: str = field(metadata={"help": "the engine's output folder (its layout: python -m preprocess --help)"})
    workers: int = field(default=4, metadata={"help": "clips processed at once (threads)"})
    retry_failed: bool = field(default=False, metadata={
        "help": "process again the clips an earlier run recorded as failed (state/<step>/failed.jsonl)"})
    clips: str | None = field(default=None, metadata={"help": "comma-separated clip ids: process only these"})
    max_skip_fraction: float | None = field(default=None, metadata={
        "help": "fail (exit 1) when more than this fraction of the clips failed, in this run or an earlier one; "
                "default: fail only when every clip failed"})
    log_level: str = field(default="INFO", metadata={"help": "logging level", "choices": list(LOG_LEVELS)})

    def __post_init__(self):
        _at_least("--workers", self.workers, 1)
        _fraction("--max_skip_fraction", self.max_skip_fraction)

    def select(self, clip_ids: list[str]) -> list[str]:
        """`clip_ids` restricted to --clips (all of them without it)."""
        if not self.clips:
            return clip_ids
        wanted = {c.strip() for c in self.clips.split(",") if c.strip()}
        return [c for c in clip_ids if c in wanted]


@dataclass
class LLMArguments:
    """The flags of the OpenAI-compatible LLM the objects and QA steps ask."""

    llm_base_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible base URL; default $OPENAI_BASE_URL, else OpenAI's"})
    llm_api_key: str | None = field(default=None, metadata={
        "help": "API key; default $OPENAI_API_KEY (prefer the variable: flags show in `ps`)"})
    llm_model: str | None = field(default=None, metadata={
        "help": f"model name sent to the service, one model (no rotation); default $LLM_MODEL, else {DEFAULT_LLM_MODEL}"})
    llm_timeout: float = field(default=120.0, metadata={"help": "seconds before a request counts as timed out"})
    llm_retries: int = field(default=5, metadata={
        "help": "retries of a request after HTTP 429, 5xx, a timeout or a lost connection"})
    llm_backoff: float = field(default=1.0, metadata={
        "help": "first retry delay in seconds (doubles each retry, at most 60; a Retry-After header wins)"})
    llm_tries: int = field(default=3, metadata={
        "help": "requests per short question whose replies are unusable (not JSON, missing fields)"})
    llm_temperature: float = field(default=0.0, metadata={
        "help": "sampling temperature (0: as reproducible as the service allows)"})
    llm_max_tokens: int = field(default=1024, metadata={"help": "longest short (JSON) reply, in tokens"})

    def __post_init__(self):
        if not self.llm_timeout > 0:
            raise ValueError(f"--llm_timeout must be > 0, got {self.llm_timeout}")
        _at_least("--llm_retries", self.llm_retries, 0)
        _at_least("--llm_backoff", self.llm_backoff, 0)
        _at_least("--llm_tries", self.llm_tries, 1)
        _at_least("--llm_temperature", self.llm_temperature, 0)
        _at_least("--llm_max_tokens", self.llm_max_tokens, 1)


@dataclass(kw_only=True)
class FramesArguments(StepArguments):
    input: str = field(metadata={"help": "SpatialVID folder (videos/<group>/<id>.mp4 and annotations/)"})
    max_frames: int = field(default=MAX_FRAMES, metadata={"help": "a clip whose indexes.txt lists more frames fails"})

    def __post_init__(self):
        super().__post_init__()
        _at_least("--max_frames", self.max_frames, 1)


@dataclass(kw_only=True)
class MasksArguments(StepArguments):
    model: str = field(metadata={"help": "SAM3 checkpoint: a folder or a Hub id (facebook/sam3)"})
    tracking: bool = field(default=False, metadata={
        "help": "prompt once and track through the clip with SAM3's video model (default: each frame on its own)"})
    score_threshold: float = field(default=0.5, metadata={"help": "lowest instance score kept (SAM3's default)"})
    mask_threshold: float = field(default=0.5, metadata={"help": "mask probability threshold"})
    batch_size: int = field(default=8, metadata={"help": "frames per forward of the image model"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when visible)"})
    dtype: str = field(default="auto", metadata={"help": "auto: bfloat16 on CUDA, float32 on CPU",
                                                 "choices": ["auto", "float32", "bfloat16", "float16"]})
    workers: int = field(default=2, metadata={"help": "clips in flight (model calls take turns; file I/O overlaps)"})

    def __post_init__(self):
        super().__post_init__()
        _fraction("--score_threshold", self.score_threshold)
        _fraction("--mask_threshold", self.mask_threshold)
        _at_least("--batch_size", self.batch_size, 1)


@dataclass(kw_only=True)
class QAArguments(StepArguments):
    seed: int = field(default=0, metadata={
        "help": "seed of every random choice (each clip draws from its own generator, made from the seed and its id)"})
    cot_tries: int = field(default=10, metadata={"help": "chain-of-thought requests per item before it is skipped"})
    cot_max_tokens: int = field(default=8192, metadata={"help": "longest chain-of-thought reply, in tokens"})
    cot_max_frames: int = field(default=50, metadata={
        "help": "clip frames sent with each chain-of-thought request (evenly subsampled)"})
    workers: int = field(default=8, metadata={"help": "clips in flight (their LLM requests run concurrently)"})

    def __post_init__(self):
        super().__post_init__()
        _at_least("--cot_tries", self.cot_tries, 1)
        _at_least("--cot_max_tokens", self.cot_max_tokens, 1)
        _at_least("--cot_max_frames", self.cot_max_frames, 1)


@dataclass
class MergeArguments:
    out: str = field(metadata={"help": "the engine's output folder"})
    log_level: str = field(default="INFO", metadata={"help": "logging level", "choices": list(LOG_LEVELS)})


@dataclass
class ConvertArguments:
    out: str = field(metadata={"help": "the engine's output folder (the QA records' paths are relative to it)"})
    input: str | None = field(default=None, metadata={"help": "QA records (JSONL); default OUT/qa/qa_all.jsonl"})
    dift_output: str | None = field(default=None, metadata={"help": "default OUT/dift_data.unchecked.jsonl"})
    rl_output: str | None = field(default=None, metadata={"help": "default OUT/rl_data.unchecked.jsonl"})
    log_level: str = field(default="INFO", metadata={"help": "logging level", "choices": list(LOG_LEVELS)})


@dataclass
class CheckArguments:
    out: str | None = field(default=None, metadata={
        "help": "the engine's output folder: check OUT/dift_data.unchecked.jsonl and OUT/rl_data.unchecked.jsonl"})
    input: str | None = field(default=None, metadata={"help": "one JSONL file to check, instead of --out"})
    output: str | None = field(default=None, metadata={"help": "where --input's kept records go; default <input>_cleaned.jsonl"})
    max_skip_fraction: float | None = field(default=None, metadata={
        "help": "fail (exit 1) when more than this fraction of a file's records is dropped; default: fail only "
                "when every record is dropped"})
    log_level: str = field(default="INFO", metadata={"help": "logging level", "choices": list(LOG_LEVELS)})

    def __post_init__(self):
        if not self.out and not self.input:
            raise ValueError("give --out (the engine's output folder) or --input (one JSONL file)")
        if self.output and not self.input:
            raise ValueError("--output goes with --input")
        _fraction("--max_skip_fraction", self.max_skip_fraction)


class Step(NamedTuple):
    module: str  # the module whose run(*arguments) does the step
    arguments: tuple[type, ...]
    summary: str
    per_clip: bool  # resumable per clip (state/<step>/), else one atomic pass over files
    io: str  # what it reads and writes, for --help


STEPS: dict[str, Step] = {
    "frames": Step("preprocess.clip_frames", (FramesArguments,), "SpatialVID clips -> annotated frames with their real times",
                   True, "in:  INPUT/videos/<group>/<id>.mp4, INPUT/annotations/<group>/<id>/{indexes.txt, instructions.json, "
                         "caption.json}\nout: OUT/clips/<id>/frames/frame_%04d.jpg, OUT/clips/<id>/clip.json"),
    "objects": Step("preprocess.objects", (StepArguments, LLMArguments), "an LLM names one moving and one static object per clip",
                    True, "in:  OUT/clips/<id>/frames/ (clips the frames step finished)\nout: OUT/clips/<id>/objects.json"),
    "masks": Step("preprocess.masks", (MasksArguments,), "SAM3 masks of both objects in every frame", True,
                  "in:  OUT/clips/<id>/{frames/, objects.json}\nout: OUT/clips/<id>/{masks_dynamic/, masks_static/, "
                  "masked_frames/, masks.json}"),
    "camera_qa": Step("preprocess.camera_qa", (QAArguments, LLMArguments), "camera-motion questions with a chain of thought",
                      True, "in:  OUT/clips/<id>/{clip.json, objects.json, frames/, masks_static/}\n"
                            "out: OUT/clips/<id>/{camera_qa.json, masked_static_overlays/}"),
    "object_qa": Step("preprocess.object_qa", (QAArguments, LLMArguments), "object-motion questions with a chain of thought",
                      True, "in:  OUT/clips/<id>/{clip.json, objects.json, frames/, masks_dynamic/}\n"
                            "out: OUT/clips/<id>/{object_qa.json, masked_dynamic_overlays/}"),
    "merge": Step("preprocess.merge", (MergeArguments,), "per-clip files -> QA JSONL files, clips.jsonl, statistics", False,
                  "in:  OUT/clips/<id>/*\nout: OUT/qa/{camera_qa,object_qa,qa_all}.jsonl, OUT/qa/merge_stats.json, "
                  "OUT/clips.jsonl"),
    "convert": Step("preprocess.convert", (ConvertArguments,), "QA records -> DIFT and RL training records", False,
                    "in:  OUT/qa/qa_all.jsonl\nout: OUT/dift_data.unchecked.jsonl, OUT/rl_data.unchecked.jsonl"),
    "check": Step("preprocess.check", (CheckArguments,), "drop training records whose tags or images are wrong", False,
                  "in:  OUT/dift_data.unchecked.jsonl, OUT/rl_data.unchecked.jsonl (or --input)\n"
                  "out: OUT/dift_data.jsonl, OUT/rl_data.jsonl (or --output)"),
}
PER_CLIP_NOTE = ("Rerunning the same command resumes: finished clips (state/<step>/completed.txt) are skipped, "
                 "failed ones\n(state/<step>/failed.jsonl) too unless --retry_failed. Exit codes: 0 done, 1 failed, "
                 "2 bad flag, 130 interrupted.")
FILE_NOTE = "Each output is replaced whole (written to a temporary name, then renamed). Exit codes: 0 done, 1 failed, 2 bad flag."


def prog(step: str) -> str:
    return f"python -m preprocess {step}"


def make_parser(step: str):
    """The step's parser (flags, `--config file.yaml`, help)."""
    spec = STEPS[step]
    note = PER_CLIP_NOTE.replace("<step>", step) if spec.per_clip else FILE_NOTE
    return build_parser(spec.arguments, prog=prog(step), description=f"{spec.summary[0].upper()}{spec.summary[1:]}.\n\n"
                                                                    f"{spec.io}\n\n{note}")


def parse_step_args(step: str, argv: list[str] | None = None) -> tuple:
    """The step's argument dataclasses from `argv` (UsageError for a bad flag or value)."""
    return parse_cli_args(make_parser(step), argv)
