"""Single-video inference: ask a DIFT / 4DRL checkpoint one question about a video and print its
reasoning and the extracted answer letter (spec model_and_dift.md section 8).

    python -m dift.inference --model_path CKPT --video clip.mp4 --question "Where does the car go?
    A. Left
    B. Right"
    python -m dift.inference --model_path CKPT --image_dir frames/ --question "..." --greedy

Frames come at 1 fps from `--video` (decoded once into the frame cache under `--cache_dir`) or from
a folder of `frame_*.jpg` already at 1 fps (`--image_dir`), at most 50, and reach the model as one
video. Unlike the original, whose script dropped the frames and sent the model only the text, the
model sees the video. Decoding as the original: top_k and repetition_penalty, unless given, come from
the checkpoint's generation_config.json (`--generation_config flags` ignores it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .core.cli import add_negative_flag, build_parser, parse_cli_args, require_path, run_cli
from .core.decoding import LATENT_ABLATIONS, SamplingConfig, resolve_sampling
from .core.decoding import MODES as DECODING_MODES
from .core.logs import setup_logging

log = logging.getLogger("dift.inference")
PROG = "python -m dift.inference"


@dataclass
class InferenceArguments:
    question: str = field(metadata={"help": "the question, with its options (A. ..., B. ...) on their own lines; "
                                            "the output-format instruction is appended"})
    model_path: str = field(default="./model/dift/checkpoints", metadata={
        "help": "DIFT or 4DRL checkpoint folder, or a Hugging Face Hub id", "aliases": ["--model_name_or_path"]})
    image_dir: str | None = field(default=None, metadata={"help": "folder of frame_*.jpg at 1 fps (sorted by name)"})
    video: str | None = field(default=None, metadata={"help": "a video file; frames are taken at 1 fps"})
    cache_dir: str = field(default="./cache", metadata={
        "help": "frames decoded from --video are cached here (and Hub downloads)"})
    max_new_tokens: int = field(default=1024, metadata={"help": "generation budget"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    top_k: int | None = field(default=None, metadata={
        "help": "top-k filtering, 0 = off; default: the checkpoint's generation_config.json, as the original "
                "(Qwen2.5-VL's: 1, i.e. greedy)"})
    repetition_penalty: float | None = field(default=None, metadata={
        "help": "1.0 = off; default: the checkpoint's generation_config.json, as the original (Qwen2.5-VL's: 1.05)"})
    generation_config: str = field(default="checkpoint", metadata={
        "help": "checkpoint: decoding fields not given here come from the checkpoint's generation_config.json "
                "(as the original); flags: only these flags (top_k off, penalty 1.0 unless given)",
        "choices": list(DECODING_MODES)})
    greedy: bool = field(default=False, metadata={"help": "greedy decoding instead of sampling"})
    seed: int = field(default=42, metadata={"help": "sampling seed"})
    latent_size: int | None = field(default=None, metadata={"help": "latent tokens per imagined image "
                                                                    "(default: the checkpoint's)"})
    latent_ablation: str = field(default="none", metadata={
        "help": "what is fed inside latent blocks: the model's hidden states (none), zeros, or norm-matched noise",
        "choices": list(LATENT_ABLATIONS)})
    engine: bool = field(default=True, metadata={
        "help": "generate with the engine (static KV slots, continuous batching: a finished answer's slot takes "
                "the next question); --no_engine: the reference loop, one batch at a time (same answers)"})
    compile: bool | None = field(default=None, metadata={
        "help": "compile the engine's decode step (torch.compile; CUDA graphs on CUDA); default: off, since for "
                "one question the one-off compile costs more than it saves"})
    device: str | None = field(default=None, metadata={"help": "default: cuda if available, else cpu"})
    dtype: str = field(default="auto", metadata={"help": "auto = bfloat16 on GPU, float32 on CPU",
                                                 "choices": ["auto", "bfloat16", "float16", "float32"]})

    def __post_init__(self):
        if (self.image_dir is None) == (self.video is None):
            raise ValueError("give exactly one of --video FILE or --image_dir DIR (there is no built-in sample)")
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

    def check_paths(self) -> None:
        """UsageError for a path flag that names nothing (before the model is loaded)."""
        require_path("--video", self.video, "file")
        require_path("--image_dir", self.image_dir, "dir")
        require_path("--model_path", self.model_path, "model")

    def sampling(self, model_path: str) -> tuple[SamplingConfig, dict[str, str]]:
        """The effective decoding and where each inherited field came from (`dift.core.decoding`)."""
        return resolve_sampling(max_new_tokens=self.max_new_tokens, greedy=self.greedy, temperature=self.temperature,
                                top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                                model_path=model_path, mode=self.generation_config)


def load_frames(args: InferenceArguments) -> list:
    """The frames the model sees (1 fps, at most 50, area-capped), from --video or --image_dir."""
    from .core.frames import FrameCache, load_frame_folder, load_video_frames

    if args.video is not None:
        return load_video_frames(args.video, FrameCache(Path(args.cache_dir) / "frame_cache"))
    return load_frame_folder(args.image_dir)


def run(args: InferenceArguments) -> tuple[str, str]:
    """(assistant text, extracted answer letter) for the question about the video."""
    import torch

    from .core.checkpoint import load_latent_model, resolve_model_path
    from .core.cli import UsageError
    from .core.decoding import describe as describe_decoding
    from .core.extraction import extract_answer
    from .core.generation import Question, answer_questions

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is visible (use --device cpu)")
    dtype = (torch.bfloat16 if device.startswith("cuda") else torch.float32) if args.dtype == "auto" \
        else getattr(torch, args.dtype)
    frames = load_frames(args)  # before the model: a bad path fails in a second
    model_path = resolve_model_path(args.model_path, args.cache_dir)
    sampling, sources = args.sampling(model_path)
    log.info("%d frames; loading %s on %s (%s)", len(frames), model_path, device, dtype)
    loaded = load_latent_model(model_path, dtype=dtype, device=device, latent_size=args.latent_size)
    log.info(describe_decoding(sampling, sources))
    question = Question(visual=frames, question=args.question, seed=args.seed)
    [(_, result)] = answer_questions(loaded, [question], sampling, batch_size=1,
                                     latent_ablation=args.latent_ablation, progress=False, engine=args.engine,
                                     compile=bool(args.compile))  # auto (None) = off: one question
    return result.text, extract_answer(result.text)


def make_parser():
    return add_negative_flag(build_parser(InferenceArguments, prog=PROG, description=__doc__.split("\n\n")[0]),
                             "compile", "do not compile the decode step")


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_cli_args(make_parser(), argv)
    args.check_paths()
    setup_logging(fmt="%(message)s")
    text, answer = run(args)
    print(text)
    print(f"Answer: {answer or '(none)'}")


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message names the file or flag at fault: exit 1 with that line."""
    from .core.decoding import GenerationConfigError
    from .core.frames import VideoDecodeError
    from .core.tokens import LatentCheckpointError

    return (FileNotFoundError, VideoDecodeError, LatentCheckpointError, GenerationConfigError, OSError)


def cli(argv: list[str] | None = None) -> None:
    """`python -m dift.inference`, with the project's exit codes (dift.core.cli)."""
    run_cli(PROG, lambda: main(argv), failures=_input_errors, interrupted="nothing to keep: rerun the command")


if __name__ == "__main__":
    cli()
