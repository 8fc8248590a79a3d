"""`python -m fourdrl.train`: 4DRL, GRPO with latent imagery from a DIFT checkpoint (spec fourdrl.md).

    python -m fourdrl.train --model_name_or_path model/dift/checkpoints --data_path data/rl_data.jsonl [flags]
    python -m fourdrl.train --config run.yaml [flags]
    torchrun --nproc_per_node 8 -m fourdrl.train ... --deepspeed configs/ds_zero2_grpo.json

Flags: the original launcher's (TRL's `GRPOConfig`: `--num_generations`, `--beta`, `--reward_weights`,
`--max_completion_length`, ...; `ModelConfig`: `--model_name_or_path`, `--use_peft`, `--lora_r`, ...)
with its defaults (`fourdrl.config`), plus `--data_path` (several files joined with `:`),
`--reward_funcs accuracy format`, `--skip_bad_records`, `--exp_name`, `--latent_start_in_loss`,
`--max_frames`, `--max_frame_side`; `--help` lists all.
Outputs under OUTPUT_DIR/EXP_NAME/: `checkpoints/checkpoint-N` (every `--save_steps`, all kept, each a
full model + processor + latent config that `evaluation.dsr_eval` and `dift.inference` load; LoRA runs
save adapters: `python -m fourdrl.lora` merges them), the final model in `checkpoints/` itself,
`tensorboard/`, `logs/train.log`. A run resumes from its newest checkpoint (as the original);
`--resume_from_checkpoint false` starts over, a path resumes from that checkpoint.
Several processes need DeepSpeed (`--deepspeed`): the replay forward runs on the unwrapped model, which
DDP would not synchronise.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, TrlParser

from dift.core.checkpoint import load_latent_model
from dift.core.frames import FrameCache
from dift.core.tokens import LatentCheckpointError

from .config import FourDRLConfig
from .data import RLDataError, build_rl_dataset, read_rl_records
from .lora import build_lora_config
from .rewards import REWARD_FUNCS, resolve_reward_funcs
from .trainer import LatentGRPOTrainer

log = logging.getLogger("fourdrl.train")
DEFAULT_MODEL = "./model/dift/checkpoints"


class RLUsageError(ValueError):
    """Flags that cannot work together (exit code 2)."""


@dataclass
class RLScriptArguments:
    data_path: str = field(default="./data/4drl_data_filtered.jsonl", metadata={
        "help": "RL JSONL file(s), several joined with ':' (Question, A-D, Correct, frame_paths or video_path a "
                "line; the data engine's rl_data.jsonl or the original's layout)"})
    reward_funcs: list[str] = field(default_factory=lambda: ["accuracy", "format"], metadata={
        "help": f"reward functions: names ({', '.join(REWARD_FUNCS)}) or dotted paths module.function; "
                "weights in --reward_weights"})
    skip_bad_records: bool = field(default=False, metadata={
        "help": "skip unusable records (counted and reported) instead of stopping at the first with file:line"})
    frame_cache: str | None = field(default=None, metadata={
        "help": "where frames of video_path records are extracted (default $FOURDTHINKER_FRAME_CACHE or the temp folder)"})


def make_parser() -> TrlParser:
    return TrlParser((RLScriptArguments, FourDRLConfig, ModelConfig), prog="python -m fourdrl.train",
                     description=__doc__.split("\n\n")[0])


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_resume(value: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint to resume from: the newest under `checkpoint_dir` unless told otherwise
    ('false' = start over, 'true' = the newest, or a checkpoint folder)."""
    newest = get_last_checkpoint(str(checkpoint_dir)) if Path(checkpoint_dir).is_dir() else None
    if value is None or value.strip().lower() in ("true", "latest", ""):
        return newest
    if value.strip().lower() in ("false", "no", "none"):
        return None
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder {value}")
    return value


class MetricsLogCallback(TrainerCallback):
    """Every logged metric dictionary as one line of the run's log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            text = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(logs.items()))
            logging.getLogger("fourdrl.metrics").info("step %d: %s", state.global_step, text)


def setup_logging(log_dir: Path, is_main: bool) -> list[tuple[logging.Logger, logging.Handler]]:
    """Console on every rank (warnings only off rank 0) and logs/train.log on rank 0 (appended: resumed runs add)."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root, handlers = logging.getLogger(), []
    if not root.handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(formatter)
        root.addHandler(console)
        handlers.append((root, console))
    logging.getLogger("fourdrl").setLevel(logging.INFO if is_main else logging.WARNING)
    metrics = logging.getLogger("fourdrl.metrics")
    metrics.propagate = False  # metric lines go to the log file only (the console shows the Trainer's own)
    if is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / "train.log", mode="a")
        file_handler.setFormatter(formatter)
        for logger in (root, metrics):
            logger.addHandler(file_handler)
            handlers.append((logger, file_handler))
    return handlers


def check_run_settings(script_args: RLScriptArguments, args: FourDRLConfig) -> list:
    """The reward functions; an `RLUsageError` for flags that cannot work together."""
    if world_size() > 1 and not args.deepspeed:
        raise RLUsageError("several processes need --deepspeed (e.g. configs/ds_zero2_grpo.json): the replay forward "
                           "runs on the unwrapped model, whose gradients DDP would not synchronise")
    try:
        reward_funcs = resolve_reward_funcs(script_args.reward_funcs)
    except ValueError as err:
        raise RLUsageError(f"--reward_funcs: {err}") from None
    if args.reward_weights is not None and len(args.reward_weights) != len(reward_funcs):
        raise RLUsageError(f"--reward_weights has {len(args.reward_weights)} value(s) for "
                           f"{len(reward_funcs)} --reward_funcs ({' '.join(script_args.reward_funcs)})")
    return reward_funcs


def train(script_args: RLScriptArguments, args: FourDRLConfig, model_args: ModelConfig) -> LatentGRPOTrainer:
    """Run GRPO; returns the trainer after the final model is saved into OUTPUT_DIR/EXP_NAME/checkpoints."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    handlers = setup_logging(args.log_dir, is_main)
    try:
        reward_funcs = check_run_settings(script_args, args)
        resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
        with args.main_process_first(desc="reading the RL data"):  # rank 0 extracts video frames first
            records = read_rl_records(script_args.data_path, skip_bad_records=script_args.skip_bad_records,
                                      max_frames=args.max_frames, cache=FrameCache(script_args.frame_cache),
                                      progress=is_main)
        dtype = model_args.dtype if model_args.dtype not in (None, "auto") else (
            torch.bfloat16 if args.bf16 else torch.float32)
        loaded = load_latent_model(model_args.model_name_or_path or DEFAULT_MODEL, dtype=dtype)
        model = loaded.model
        model.freeze_vision_tower()  # the tower runs under no-grad and keeps no optimiser state
        peft_config = build_lora_config(model_args, model, loaded.token_ids) if model_args.use_peft else None
        callbacks = [MetricsLogCallback()]
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(args.tensorboard_dir))))
        trainer = LatentGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                                    train_dataset=build_rl_dataset(records), processing_class=loaded.processor,
                                    peft_config=peft_config, callbacks=callbacks)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        log.info("4DRL %s: %d prompts, G %d, %s trainable parameters%s, %d process(es), bf16=%s, deepspeed=%s%s",
                 args.exp_name, len(records), args.num_generations, f"{trainable:,}", " (LoRA)" if peft_config else "",
                 world_size(), args.bf16, args.deepspeed, f", resuming from {resume}" if resume else "")
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(args.output_dir)  # the final model goes into checkpoints/ itself
        trainer.save_state()
        log.info("final checkpoint: %s", args.output_dir)
        return trainer
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def main(argv: list[str] | None = None) -> int:
    # A user's mistake (a flag, a record, a checkpoint folder) ends the run with one line, not a traceback.
    try:
        script_args, args, model_args = make_parser().parse_args_and_config(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"fourdrl.train: {err}", file=sys.stderr)
        return 2
    try:
        train(script_args, args, model_args)
    except RLUsageError as err:
        print(f"fourdrl.train: {err}", file=sys.stderr)
        return 2
    except (RLDataError, LatentCheckpointError, FileNotFoundError) as err:
        print(f"fourdrl.train: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fourdrl.train: interrupted; checkpoints written so far are kept in {args.output_dir} "
              "(rerun the same command to resume from the newest)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
