"""The 4DRL recipe behind `python -m fourdrl.train` (fourdrl/train.py: the light entry point): its
flags (`RLScriptArguments`, `FourDRLConfig`, TRL's `ModelConfig`), the checks that need them all,
logging to OUTPUT_DIR/EXP_NAME/logs and TensorBoard, resume, and the GRPO run itself."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import TrainerCallback
from trl import ModelConfig

from dift.core.checkpoint import load_latent_model, resolve_model_path
from dift.core.cli import UsageError, build_parser, parse_cli_args
from dift.core.distributed import ProcessLayout
from dift.core.frames import FrameCache
from dift.core.logs import DATE_FORMAT, LOG_FORMAT, require_wandb, setup_logging, show_progress
from dift.core.training_checkpoint import is_complete_checkpoint, newest_complete_checkpoint

from .config import FourDRLConfig
from .data import build_rl_dataset, read_rl_records
from .lora import build_lora_config
from .rewards import REWARD_FUNCS, resolve_reward_funcs
from .trainer import LatentGRPOTrainer

log = logging.getLogger("fourdrl.train")
DEFAULT_MODEL = "./model/dift/checkpoints"


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
    max_skip_fraction: float = field(default=1.0, metadata={
        "help": "with --skip_bad_records: fail when more than this fraction of the records is skipped "
                "(1.0: only when every one is)"})
    frame_cache: str | None = field(default=None, metadata={
        "help": "where frames of video_path records are extracted (default $FOURDTHINKER_FRAME_CACHE or the temp folder)"})

    def __post_init__(self):
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"--max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")


def make_parser():
    from .train import DESCRIPTION, PROG

    return build_parser((RLScriptArguments, FourDRLConfig, ModelConfig), prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> tuple[RLScriptArguments, FourDRLConfig, ModelConfig]:
    """The three dataclasses from `--config file.yaml` (if given) and the flags; UsageError if refused."""
    return parse_cli_args(make_parser(), argv)


def resolve_resume(value: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint to resume from: the newest complete one under `checkpoint_dir` unless told
    otherwise ('false' = start over, 'true' = the newest complete, or a checkpoint folder). Folders
    of a save cut short (no completion marker) are passed over, with a warning."""
    if value is None or value.strip().lower() in ("true", "latest", ""):
        newest, passed_over = newest_complete_checkpoint(checkpoint_dir)
        for folder in passed_over:
            log.warning("passing over %s: its save did not complete (the process was stopped while saving)", folder)
        return None if newest is None else str(newest)
    if value.strip().lower() in ("false", "no", "none"):
        return None
    if not Path(value).is_dir():
        raise UsageError(f"--resume_from_checkpoint: no checkpoint folder {value}")
    if not is_complete_checkpoint(value):
        raise UsageError(f"--resume_from_checkpoint: {value} is incomplete (its save was cut short); pass an "
                         "earlier checkpoint or 'true' for the newest complete one")
    return value


class MetricsLogCallback(TrainerCallback):
    """Every logged metric dictionary as one line of the run's log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            text = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(logs.items()))
            logging.getLogger("fourdrl.metrics").info("step %d: %s", state.global_step, text)


def setup_run_logging(log_dir: Path, is_main: bool) -> list[tuple[logging.Logger, logging.Handler]]:
    """The project's console logging (warnings only off rank 0) and, on rank 0, logs/train.log (appended:
    a resumed run adds to it) with every metric line. Returns the file handlers, removed at the end."""
    setup_logging(rank=0 if is_main else 1)
    metrics = logging.getLogger("fourdrl.metrics")
    metrics.propagate = False  # metric lines go to the log file only (the console shows the Trainer's own)
    handlers = []
    if is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / "train.log", mode="a")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT))
        for logger in (logging.getLogger(), metrics):
            logger.addHandler(file_handler)
            handlers.append((logger, file_handler))
    return handlers


def check_run_settings(script_args: RLScriptArguments, args: FourDRLConfig) -> list:
    """The reward functions; a `UsageError` for flags that cannot work together."""
    if ProcessLayout.from_env().world_size > 1 and not args.deepspeed:
        raise UsageError("several processes need --deepspeed (e.g. configs/ds_zero2_grpo.json): the replay forward "
                           "runs on the unwrapped model, whose gradients DDP would not synchronise")
    try:
        reward_funcs = resolve_reward_funcs(script_args.reward_funcs)
    except ValueError as err:
        raise UsageError(f"--reward_funcs: {err}") from None
    if args.reward_weights is not None and len(args.reward_weights) != len(reward_funcs):
        raise UsageError(f"--reward_weights has {len(args.reward_weights)} value(s) for "
                           f"{len(reward_funcs)} --reward_funcs ({' '.join(script_args.reward_funcs)})")
    return reward_funcs


def train(script_args: RLScriptArguments, args: FourDRLConfig, model_args: ModelConfig) -> LatentGRPOTrainer:
    """Run GRPO; returns the trainer after the final model is saved into OUTPUT_DIR/EXP_NAME/checkpoints."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    handlers = setup_run_logging(args.log_dir, is_main)
    try:
        reward_funcs = check_run_settings(script_args, args)
        if not show_progress(is_main):
            args.disable_tqdm = True  # bars only on a terminal: in a log file they are fragments
        resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
        with args.main_process_first(desc="reading the RL data"):  # rank 0 extracts video frames first
            records = read_rl_records(script_args.data_path, skip_bad_records=script_args.skip_bad_records,
                                      max_frames=args.max_frames, cache=FrameCache(script_args.frame_cache),
                                      max_skip_fraction=script_args.max_skip_fraction,
                                      progress=show_progress(is_main))
        dtype = model_args.dtype if model_args.dtype not in (None, "auto") else (
            torch.bfloat16 if args.bf16 else torch.float32)
        model_path = resolve_model_path(model_args.model_name_or_path or DEFAULT_MODEL, flag="--model_name_or_path")
        loaded = load_latent_model(model_path, dtype=dtype)
        model = loaded.model
        model.freeze_vision_tower()  # the tower runs under no-grad and keeps no optimiser state
        peft_config = build_lora_config(model_args, model, loaded.token_ids) if model_args.use_peft else None
        callbacks = [MetricsLogCallback()]
        # TensorBoard into the run's own folder (the Trainer's integration would use logging_dir); the
        # other integrations (wandb) are the Trainer's.
        use_tensorboard = "tensorboard" in args.report_to
        args.report_to = [name for name in args.report_to if name != "tensorboard"]
        if "wandb" in args.report_to:
            require_wandb()
        if is_main and use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(args.tensorboard_dir))))
        trainer = LatentGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                                    train_dataset=build_rl_dataset(records), processing_class=loaded.processor,
                                    peft_config=peft_config, callbacks=callbacks)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        log.info("4DRL %s: %d prompts, G %d, %s trainable parameters%s, %d process(es), bf16=%s, deepspeed=%s%s",
                 args.exp_name, len(records), args.num_generations, f"{trainable:,}", " (LoRA)" if peft_config else "",
                 ProcessLayout.from_env().world_size, args.bf16, args.deepspeed, f", resuming from {resume}" if resume else "")
        layout = ProcessLayout.from_env()
        log.info("%s; global batch %d completions = %d per process x %d accumulation x %d processes (%d prompts x G %d)",
                 layout.describe(), args.per_device_train_batch_size * args.gradient_accumulation_steps * layout.world_size,
                 args.per_device_train_batch_size, args.gradient_accumulation_steps, layout.world_size,
                 args.per_device_train_batch_size * args.gradient_accumulation_steps * layout.world_size
                 // args.num_generations, args.num_generations)
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(args.output_dir)  # the final model goes into checkpoints/ itself
        trainer.save_state()
        log.info("final checkpoint: %s", args.output_dir)
        return trainer
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def interrupted_message(args: FourDRLConfig) -> str:
    """What a Ctrl-C keeps and how to go on."""
    return (f"checkpoints written so far are kept in {args.output_dir}; rerun the same command to resume "
            "from the newest")
