"""Single-video inference: ask a DIFT / 4DRL checkpoint one question about a video and print its
reasoning and the extracted answer letter (spec model_and_dift.md section 8).

    python -m dift.inference --model_path CKPT --video clip.mp4 --question "Where does the car go?
    A. Left
    B. Right"
    python -m dift.inference --model_path CKPT --image_dir frames/ --question "..." --greedy

Frames come at 1 fps from `--video` (decoded once into the frame cache under `--cache_dir`) or from
a folder of `frame_*.jpg` already at 1 fps (`--image_dir`), at most 50, and reach the model as one
video. Unlike the original, whose script dropped the frames and sent the model only the text, the
model sees the video; and every sampling field is set here, none taken from generation_config.json.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from dift.core.extraction import extract_answer
from dift.core.frames import FrameCache, VideoDecodeError, load_frame_folder, load_video_frames

from .core.checkpoint import load_latent_model
from .core.generation import LATENT_ABLATIONS, Question, SamplingConfig, answer_questions
from .core.tokens import LatentCheckpointError

log = logging.getLogger("dift.inference")


@dataclass
class InferenceArguments:
    question: str = field(metadata={"help": "the question, with its options (A. ..., B. ...) on their own lines; "
                                            "the output-format instruction is appended"})
    model_path: str = field(default="./model/dift/checkpoints", metadata={"help": "DIFT or 4DRL checkpoint folder"})
    image_dir: str | None = field(default=None, metadata={"help": "folder of frame_*.jpg at 1 fps (sorted by name)"})
    video: str | None = field(default=None, metadata={"help": "a video file; frames are taken at 1 fps"})
    cache_dir: str = field(default="./cache", metadata={"help": "frames decoded from --video are cached here"})
    max_new_tokens: int = field(default=1024, metadata={"help": "generation budget"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "1.0 = off"})
    greedy: bool = field(default=False, metadata={"help": "greedy decoding instead of sampling"})
    seed: int = field(default=42, metadata={"help": "sampling seed"})
    latent_size: int | None = field(default=None, metadata={"help": "latent tokens per imagined image "
                                                                    "(default: the checkpoint's)"})
    latent_ablation: str = field(default="none", metadata={"help": f"one of {LATENT_ABLATIONS}: feed the hidden "
                                                                   "states, zeros, or norm-matched noise"})
    device: str | None = field(default=None, metadata={"help": "default: cuda if available, else cpu"})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on GPU, float32 on CPU), bfloat16, "
                                                         "float16 or float32"})

    def __post_init__(self):
        if (self.image_dir is None) == (self.video is None):
            raise ValueError("give exactly one of --video FILE or --image_dir DIR (there is no built-in sample)")
        if self.latent_ablation not in LATENT_ABLATIONS:
            raise ValueError(f"--latent_ablation must be one of {LATENT_ABLATIONS}, got {self.latent_ablation!r}")
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"--dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if str(self.device).startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, do_sample=not self.greedy,
                              temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              repetition_penalty=self.repetition_penalty)


def load_frames(args: InferenceArguments) -> list:
    """The frames the model sees (1 fps, at most 50, area-capped), from --video or --image_dir."""
    if args.video is not None:
        return load_video_frames(args.video, FrameCache(Path(args.cache_dir) / "frame_cache"))
    return load_frame_folder(args.image_dir)


def run(args: InferenceArguments) -> tuple[str, str]:
    """(assistant text, extracted answer letter) for the question about the video."""
    frames = load_frames(args)  # before the model: a bad path fails in a second
    log.info("%d frames; loading %s on %s (%s)", len(frames), args.model_path, args.device, args.torch_dtype)
    loaded = load_latent_model(args.model_path, dtype=args.torch_dtype, device=args.device,
                               latent_size=args.latent_size)
    question = Question(visual=frames, question=args.question, seed=args.seed)
    [(_, result)] = answer_questions(loaded, [question], args.sampling, batch_size=1,
                                     latent_ablation=args.latent_ablation, progress=False)
    return result.text, extract_answer(result.text)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = HfArgumentParser(InferenceArguments)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
        text, answer = run(args)
    except (ValueError, FileNotFoundError, VideoDecodeError, LatentCheckpointError, OSError) as err:
        # One line, no traceback: every error above names the file or flag at fault.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(text)
    print(f"Answer: {answer or '(none)'}")


if __name__ == "__main__":
    main()
