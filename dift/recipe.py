"""The DIFT recipe: from parsed flags (`dift.train`) to a trained checkpoint.

Maps the flags onto `transformers.TrainingArguments` (AdamW, linear decay after warmup, grad-norm
clip 1.0, reentrant gradient checkpointing, seed 42, unused columns kept) and, for DeepSpeed, fills
the JSON config's "auto" batch/accumulation/clipping/precision fields from the flags, so the same
config file serves 8 GPUs and 2 CPU processes (where bf16 is switched off); loads the base model and
makes it DIFT-ready; runs `DIFTTrainer`; writes the final model into `checkpoints/` itself.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

from .collator import DIFTCollator
from .core.checkpoint import load_processor, prepare_base_model_for_dift, resolve_model_path
from .core.cli import UsageError
from .core.distributed import ProcessLayout
from .core.logs import LOG_FORMAT, require_wandb, setup_logging, show_progress
from .core.model import LatentQwen2_5_VL
from .core.training_checkpoint import (
    COMPLETE_MARKER,
    checkpoint_step,
    is_complete_checkpoint,
    newest_complete_checkpoint,
)
from .data import DIFTJsonlDataset
from .train import LOG_FILE, TENSORBOARD, DataArguments, DIFTTrainingArguments, ModelArguments
from .trainer import DIFTTrainer, LogFileCallback

log = logging.getLogger("dift.train")


def finalize_for_device(args: DIFTTrainingArguments) -> None:
    """CPU-only machines train on CPU (the HF Trainer needs it said for DeepSpeed/gloo), without bf16
    (slow in autocast on CPU, and DeepSpeed's CPU engine does not take it)."""
    if not args.use_cpu and not torch.cuda.is_available():
        args.use_cpu = True
    if args.use_cpu and args.bf16:
        log.warning("bf16 switched off on CPU")
        args.bf16 = False


def world_size() -> int:
    return ProcessLayout.from_env().world_size


def resolve_deepspeed_config(path: str | os.PathLike, args: DIFTTrainingArguments, num_processes: int) -> dict:
    """The DeepSpeed JSON with its batch, accumulation, clipping and precision "auto" fields filled
    from the flags (DeepSpeed's CPU engine rejects "auto" batch sizes; one file serves GPU and CPU)."""
    finalize_for_device(args)
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"--deepspeed_config {path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--deepspeed_config {path}: expected a JSON object, got {type(config).__name__}")
    values = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": args.batch_size * args.gradient_accumulation_steps * num_processes,
        "gradient_clipping": 1.0,
    }
    for key, value in values.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    for precision, enabled in (("bf16", args.bf16), ("fp16", False)):
        section = config.setdefault(precision, {})
        if section.get("enabled", "auto") == "auto" or (args.use_cpu and section.get("enabled")):
            section["enabled"] = enabled
    return config


def build_training_arguments(args: DIFTTrainingArguments) -> TrainingArguments:
    finalize_for_device(args)
    deepspeed = None
    if args.deepspeed_config:
        deepspeed = resolve_deepspeed_config(args.deepspeed_config, args, world_size())
    fused = torch.cuda.is_available() and not args.use_cpu and deepspeed is None
    return TrainingArguments(
        output_dir=str(args.checkpoint_dir),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        optim="adamw_torch_fused" if fused else "adamw_torch",
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_steps,
        max_grad_norm=1.0,
        logging_steps=args.logging_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=None,  # DIFTTrainer rotates (keep_checkpoints), after marking the new one complete
        bf16=args.bf16,
        # Reentrant, as the original; only the language model's layers checkpoint (the frozen vision
        # tower stays in eval mode and runs under no-grad).
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": True} if args.gradient_checkpointing else None,
        seed=args.seed,
        data_seed=args.seed,
        remove_unused_columns=False,
        dataloader_num_workers=args.dataloader_num_workers,
        use_cpu=args.use_cpu,
        ddp_backend="gloo" if args.use_cpu and world_size() > 1 else None,
        deepspeed=deepspeed,
        # TensorBoard is our own callback (into OUTPUT_DIR/EXP_NAME/tensorboard); wandb is the library's.
        report_to=["wandb"] if args.report_to in ("wandb", "all") else "none",
        run_name=args.exp_name,
        disable_tqdm=not show_progress(),  # on a terminal only: in a log file a bar is fragments
    )


def load_model_and_processor(args: ModelArguments, dtype: torch.dtype):
    """The base model (any Qwen2.5-VL, or a DIFT checkpoint to continue from) made DIFT-ready. A Hub id
    is downloaded into --cache_dir first (offline: one line saying to pass a local folder)."""
    path = resolve_model_path(args.model, args.cache_dir, flag="--model")
    processor = load_processor(path)
    model = LatentQwen2_5_VL.from_pretrained(path, dtype=dtype)
    token_ids = prepare_base_model_for_dift(
        model, processor, latent_size=args.latent_size, compress_strategy=args.compress_strategy, stage=args.stage,
        ce_loss_weight=args.ce_loss_weight, sim_loss_weight=args.sim_loss_weight)
    return model, processor, token_ids


def resume_checkpoint(args: DIFTTrainingArguments) -> str | None:
    """The folder to resume from: the one named, or for 'true' the newest complete one under
    checkpoints/ (newer incomplete ones are skipped with a warning; none: a fresh start, logged)."""
    if args.resume is not True:
        if args.resume is not None and not is_complete_checkpoint(args.resume):
            raise UsageError(f"--resume_from_checkpoint: {args.resume} is incomplete (no {COMPLETE_MARKER}: its run "
                             "stopped while writing it); name an earlier checkpoint, or pass true for the newest "
                             "complete one")
        return args.resume
    newest, incomplete = newest_complete_checkpoint(args.checkpoint_dir)
    for path in incomplete:
        log.warning("%s is incomplete (no %s: the run stopped while writing it): skipped", path, COMPLETE_MARKER)
    if newest is None:
        log.warning("--resume_from_checkpoint true: no complete checkpoint in %s; starting from step 0",
                    args.checkpoint_dir)
        return None
    log.info("resuming from %s", newest)
    return str(newest)


def interrupted_message(args: DIFTTrainingArguments) -> str:
    """The one line a Ctrl-C ends with: what was kept, and how to go on."""
    newest, _ = newest_complete_checkpoint(args.checkpoint_dir)
    if newest is None:
        return "before the first complete checkpoint; nothing kept (rerun to start over)"
    return (f"kept {newest} (step {checkpoint_step(newest)}); to continue, rerun the same command with "
            "--resume_from_checkpoint true")


class _RunLogging:
    """Console logging (warnings only off rank 0) and log.txt on rank 0, for one run."""

    def __init__(self, run_dir: Path, is_main: bool):
        setup_logging(rank=0 if is_main else 1)
        self.handlers = []
        metrics = logging.getLogger("dift.metrics")
        metrics.propagate = False  # metric lines: log.txt only
        metrics.setLevel(logging.INFO)
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(run_dir / LOG_FILE, mode="a")  # append: resumed runs add to it
            file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
            for logger in (logging.getLogger(), metrics):
                logger.addHandler(file_handler)
                self.handlers.append((logger, file_handler))

    def close(self):
        for logger, handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()


def train(model_args: ModelArguments, data_args: DataArguments, args: DIFTTrainingArguments) -> DIFTTrainer:
    """Run DIFT; returns the trainer after the final model is saved into `args.checkpoint_dir`."""
    is_main = ProcessLayout.from_env().rank == 0
    run_logging = _RunLogging(args.run_dir, is_main)
    try:
        finalize_for_device(args)
        if args.report_to in ("wandb", "all"):
            require_wandb()
        if model_args.task != "4dthinker":
            log.info("--task %s: the output-format suffix is added regardless (one conversation format)",
                     model_args.task)
        resume = resume_checkpoint(args)
        if args.resume is None and any(args.checkpoint_dir.glob("checkpoint-*")):
            log.warning("%s already holds step checkpoints; this run starts from step 0 "
                        "(pass --resume_from_checkpoint true to continue instead)", args.checkpoint_dir)
        training_args = build_training_arguments(args)
        layout = ProcessLayout.from_env()
        log.info("%s; global batch %d = %d per process x %d accumulation x %d processes", layout.describe(),
                 args.batch_size * args.gradient_accumulation_steps * layout.world_size, args.batch_size,
                 args.gradient_accumulation_steps, layout.world_size)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        set_seed(args.seed)
        dataset = DIFTJsonlDataset(data_args.data_path, image_root=data_args.image_root,
                                   skip_bad_records=data_args.skip_bad_records, max_frames=data_args.max_frames,
                                   progress=is_main, max_skip_fraction=data_args.max_skip_fraction)
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        model, processor, token_ids = load_model_and_processor(model_args, dtype)
        collator = DIFTCollator(processor, model_args.latent_size, token_ids)
        callbacks = [LogFileCallback()]
        if is_main and args.report_to in ("tensorboard", "all"):
            from torch.utils.tensorboard import SummaryWriter

            callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(args.run_dir / TENSORBOARD))))
        trainer = DIFTTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                              processing_class=processor, callbacks=callbacks,
                              keep_checkpoints=args.save_total_limit)
        n_trainable = sum(p.numel() for p in model.trainable_parameters())
        log.info("DIFT %s: %d samples, %s trainable parameters (vision tower frozen), %d process(es), "
                 "bf16=%s, deepspeed=%s", args.exp_name, len(dataset), f"{n_trainable:,}", world_size(),
                 args.bf16, args.deepspeed_config)
        try:
            trainer.train(resume_from_checkpoint=resume)
        except KeyboardInterrupt:
            # Close the progress bar and the TensorBoard writer as a finished run does: a bar left
            # open is redrawn at exit, after main's closing line.
            trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
            raise
        if dataset.num_skipped:
            log.warning("%s", dataset.skip_summary())
        trainer.save_final_model(args.checkpoint_dir)  # the final model goes into checkpoints/ itself
        log.info("final checkpoint: %s", args.checkpoint_dir)
        return trainer
    finally:
        run_logging.close()


