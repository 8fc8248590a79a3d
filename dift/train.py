"""`python -m dift.train`: Dynamic-Imagery Fine-Tuning (DIFT) of Qwen2.5-VL (spec section 6).

    python -m dift.train --exp_name NAME --model MODEL --data_path dift_data.jsonl [flags]
    torchrun --nproc_per_node 2 -m dift.train ... --use_cpu --deepspeed_config configs/ds_zero2.json
    deepspeed --num_gpus 8 --module dift.train ... --deepspeed_config configs/ds_zero2.json

Flags are the original launcher's (`--epochs`, `--batch_size`, `--latent_size`, `--ce_loss_weight`,
...) plus a few of ours (`--image_root`, `--skip_bad_records`, `--max_steps`, `--bf16/--no_bf16`,
`--gradient_checkpointing`, `--seed`, `--use_cpu`, `--resume_from_checkpoint`); `--help` lists all.
Outputs under OUTPUT_DIR/EXP_NAME/: `checkpoints/` (step checkpoints `checkpoint-N`, the final
model in `checkpoints/` itself; each with the full processor), `log.txt`, `tensorboard/`.
A step checkpoint counts once its completion marker is written (`dift.core.training_checkpoint`);
`--resume_from_checkpoint true` takes the newest complete one and says which incomplete ones it
skipped. Exit codes: 0 trained, 1 failed (one line), 130 interrupted (one line: the checkpoint kept
and how to resume).

This module maps the flags onto `transformers.TrainingArguments` (AdamW, linear decay after
warmup, grad-norm clip 1.0, reentrant gradient checkpointing, seed 42, unused columns kept) and,
for DeepSpeed, fills the JSON config's "auto" batch/accumulation/clipping/precision fields from the
flags, so the same config file serves 8 GPUs and 2 CPU processes (where bf16 is switched off).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

from dift.core.frames import MAX_FRAMES

from .collator import DIFTCollator
from .core.checkpoint import load_processor, prepare_base_model_for_dift
from .core.distributed import ProcessLayout
from .core.latent_config import COMPRESS_STRATEGIES, DEFAULTS
from .core.model import LatentQwen2_5_VL
from .core.tokens import LatentCheckpointError
from .core.training_checkpoint import (
    COMPLETE_MARKER,
    checkpoint_step,
    is_complete_checkpoint,
    newest_complete_checkpoint,
)
from .data import DIFTDataError, DIFTJsonlDataset
from .trainer import DIFTTrainer, LogFileCallback

log = logging.getLogger("dift.train")

# The original's --task choices. Only `4dthinker` added the output-format suffix there; here the
# suffix is always added (one conversation format for training, RL, evaluation and inference).
TASKS = ("vsp-spatial-reasoning", "vsp-spatial-planning", "blink-jigsaw", "sat", "4dthinker")
CHECKPOINTS, LOG_FILE, TENSORBOARD = "checkpoints", "log.txt", "tensorboard"


@dataclass
class ModelArguments:
    model: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={
        "help": "base Qwen2.5-VL checkpoint (hub id or folder); latent tokens are added if missing"})
    stage: str = field(default=DEFAULTS["stage"], metadata={
        "help": "training stage saved in the config (only stage1 exists: the original's stage2 was unused)",
        "choices": ["stage1"]})
    task: str = field(default="vsp-spatial-reasoning", metadata={
        "help": "the original's task name; accepted and logged only: the output-format suffix is always "
                "added (the original added it only for 4dthinker, which its launchers pass)", "choices": list(TASKS)})
    latent_size: int = field(default=DEFAULTS["latent_size"], metadata={
        "help": "latent vectors (<|latent_pad|> tokens) per imagined helper image"})
    compress_strategy: str = field(default=DEFAULTS["compress_strategy"], metadata={
        "help": "how a helper image's vision features become latent_size targets: average (equal consecutive "
                "groups) or truncate (the first latent_size)", "choices": list(COMPRESS_STRATEGIES)})
    ce_loss_weight: float = field(default=DEFAULTS["ce_loss_weight"], metadata={"help": "weight of the token CE loss"})
    sim_loss_weight: float = field(default=DEFAULTS["sim_loss_weight"], metadata={
        "help": "weight of the latent cosine-similarity loss"})
    cache_dir: str = field(default="./cache", metadata={"help": "Hugging Face download cache for --model"})

    def __post_init__(self):
        if self.latent_size < 1:
            raise ValueError(f"--latent_size must be >= 1, got {self.latent_size}")
        if self.ce_loss_weight < 0 or self.sim_loss_weight < 0 or self.ce_loss_weight + self.sim_loss_weight == 0:
            raise ValueError("--ce_loss_weight and --sim_loss_weight must be >= 0 and not both 0")


@dataclass
class DataArguments:
    data_path: str = field(default="./data/dift_data.jsonl", metadata={
        "help": "dift_data.jsonl (id, image_input, image_output, text_input, text_output a line); "
                "`python scripts/make_demo_dift_data.py --out DIR` writes a small synthetic one"})
    image_root: str | None = field(default=None, metadata={
        "help": "folder that relative image paths in the JSONL start from; unset: the JSONL's own folder"})
    skip_bad_records: bool = field(default=False, metadata={
        "help": "skip unusable records (counted and reported) instead of stopping at the first with file:line"})
    max_skip_fraction: float = field(default=1.0, metadata={
        "help": "with --skip_bad_records: fail (exit 1) once the skipped records exceed this fraction of all "
                "records; 1.0 fails only when every record was skipped"})
    max_frames: int = field(default=MAX_FRAMES, metadata={"help": "frames per video given to the model (uniform subsample)"})
    fps: float = field(default=1.0, metadata={
        "help": "accepted for compatibility and unused (as in the original): frames are pre-extracted at 1 fps "
                "and always reach the model as a 1 fps video"})

    def __post_init__(self):
        if self.max_frames < 1:
            raise ValueError(f"--max_frames must be >= 1, got {self.max_frames}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"--max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")


@dataclass
class DIFTTrainingArguments:
    exp_name: str = field(metadata={"help": "experiment name: outputs go to OUTPUT_DIR/EXP_NAME/"})
    output_dir: str = field(default="./outputs", metadata={"help": "root folder of all experiments"})
    epochs: float = field(default=10.0, metadata={"help": "training epochs (the launchers use 1)"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (overrides --epochs if > 0)"})
    learning_rate: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warmup steps, then linear decay to 0"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=1, metadata={"help": "samples per device per micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    logging_steps: int = field(default=20, metadata={
        "help": "log losses (TensorBoard, log.txt, a decoded sample) every N optimizer steps, step 0 included"})
    save_steps: int = field(default=1000, metadata={"help": "write checkpoints/checkpoint-N every N optimizer steps"})
    save_total_limit: int = field(default=1, metadata={"help": "step checkpoints kept (the newest)"})
    deepspeed_config: str | None = field(default=None, metadata={
        "help": "DeepSpeed JSON (configs/ds_zero2.json, ds_zero3.json, ds_zero3_offload.json); its \"auto\" "
                "batch/accumulation/clipping/precision fields are filled from these flags"})
    local_rank: int = field(default=-1, metadata={
        "help": "set by the deepspeed launcher; the process rank is read from the environment"})
    bf16: bool = field(default=True, metadata={
        "help": "bf16 weights and autocast (switched off automatically on CPU); --no_bf16 for float32"})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "reentrant gradient checkpointing of the language model (the frozen vision tower never)"})
    seed: int = field(default=42, metadata={"help": "random seed (model init, data order)"})
    use_cpu: bool = field(default=False, metadata={
        "help": "train on CPU (automatic when no GPU is visible); with torchrun the processes use gloo"})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "a checkpoint-N folder, or 'true' for the newest complete one under OUTPUT_DIR/EXP_NAME/checkpoints "
                "(half-written ones are skipped; with none, training starts from step 0)"})
    dataloader_num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes that load images and collate (0: in the training process)"})

    def __post_init__(self):
        if not self.exp_name or "/" in self.exp_name:
            raise ValueError(f"--exp_name must be a non-empty folder name, got {self.exp_name!r}")
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set --epochs > 0 or --max_steps > 0")
        if self.warmup_steps < 0 or self.learning_rate <= 0:
            raise ValueError("--warmup_steps must be >= 0 and --learning_rate > 0")
        if self.deepspeed_config is not None and not Path(self.deepspeed_config).is_file():
            raise FileNotFoundError(f"--deepspeed_config not found: {self.deepspeed_config}")
        if self.resume_from_checkpoint is not None:
            value = self.resume_from_checkpoint.strip()
            if value.lower() in ("", "false", "none", "no"):
                self.resume_from_checkpoint = None
            elif value.lower() not in ("true", "latest"):
                if not Path(value).is_dir():
                    raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder {value}")
                if not is_complete_checkpoint(value):
                    raise ValueError(f"--resume_from_checkpoint: {value} is incomplete (no {COMPLETE_MARKER}: its "
                                     "run stopped while writing it); name an earlier checkpoint, or pass true for "
                                     "the newest complete one")
        if not self.use_cpu and not torch.cuda.is_available():
            self.use_cpu = True  # the HF Trainer needs it said explicitly for DeepSpeed/gloo on CPU
        if self.use_cpu and self.bf16:
            # CPU bf16 autocast is slow and DeepSpeed's CPU engine does not take it.
            log.warning("bf16 switched off on CPU")
            self.bf16 = False

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.exp_name

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    @property
    def resume(self) -> bool | str | None:
        """What `Trainer.train(resume_from_checkpoint=...)` takes: True (newest), a path, or None."""
        if self.resume_from_checkpoint is None:
            return None
        return True if self.resume_from_checkpoint.lower() in ("true", "latest") else self.resume_from_checkpoint


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, DIFTTrainingArguments), prog="python -m dift.train",
                            description=__doc__.split("\n\n")[0])


def world_size() -> int:
    return ProcessLayout.from_env().world_size


def resolve_deepspeed_config(path: str | os.PathLike, args: DIFTTrainingArguments, num_processes: int) -> dict:
    """The DeepSpeed JSON with its batch, accumulation, clipping and precision "auto" fields filled
    from the flags (DeepSpeed's CPU engine rejects "auto" batch sizes; one file serves GPU and CPU)."""
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
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
        report_to="none",  # TensorBoard is added as a callback writing into OUTPUT_DIR/EXP_NAME/tensorboard
        disable_tqdm=False,
    )


def load_model_and_processor(args: ModelArguments, dtype: torch.dtype):
    """The base model (any Qwen2.5-VL, or a DIFT checkpoint to continue from) made DIFT-ready."""
    local = Path(args.model).is_dir()
    processor = (load_processor(args.model) if local
                 else AutoProcessor.from_pretrained(args.model, cache_dir=args.cache_dir))
    model = LatentQwen2_5_VL.from_pretrained(args.model, dtype=dtype, cache_dir=None if local else args.cache_dir)
    token_ids = prepare_base_model_for_dift(
        model, processor, latent_size=args.latent_size, compress_strategy=args.compress_strategy, stage=args.stage,
        ce_loss_weight=args.ce_loss_weight, sim_loss_weight=args.sim_loss_weight)
    return model, processor, token_ids


def resume_checkpoint(args: DIFTTrainingArguments) -> str | None:
    """The folder to resume from: the one named, or for 'true' the newest complete one under
    checkpoints/ (newer incomplete ones are skipped with a warning; none: a fresh start, logged)."""
    if args.resume is not True:
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
        return "dift.train: interrupted before the first complete checkpoint; nothing kept (rerun to start over)"
    return (f"dift.train: interrupted; kept {newest} (step {checkpoint_step(newest)}); to continue, rerun "
            "the same command with --resume_from_checkpoint true")


class _RunLogging:
    """Console logging on every rank (warnings only off rank 0) and log.txt on rank 0, for one run."""

    def __init__(self, run_dir: Path, is_main: bool):
        self.handlers = []
        root = logging.getLogger()
        if not root.handlers:
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(console)
            self.handlers.append((root, console))
        for name in ("dift", "preprocess"):
            logging.getLogger(name).setLevel(logging.INFO if is_main else logging.WARNING)
        metrics = logging.getLogger("dift.metrics")
        metrics.propagate = False  # metric lines: log.txt only
        metrics.setLevel(logging.INFO)
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(run_dir / LOG_FILE, mode="a")  # append: resumed runs add to it
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            for logger in (root, metrics):
                logger.addHandler(file_handler)
                self.handlers.append((logger, file_handler))

    def close(self):
        for logger, handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()


def train(model_args: ModelArguments, data_args: DataArguments, args: DIFTTrainingArguments) -> DIFTTrainer:
    """Run DIFT; returns the trainer after the final model is saved into `args.checkpoint_dir`."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    run_logging = _RunLogging(args.run_dir, is_main)
    try:
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
        if is_main:
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


def main(argv: list[str] | None = None) -> DIFTTrainer:
    # Input problems (a flag, a data record, a checkpoint folder) end the run with their one-line
    # message instead of a traceback; checkpoints already written stay (resume with --resume_from_checkpoint).
    try:
        model_args, data_args, args = make_parser().parse_args_into_dataclasses(args=argv)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"dift.train: {err}") from None
    try:
        return train(model_args, data_args, args)
    except (DIFTDataError, LatentCheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"dift.train: {err}") from None
    except KeyboardInterrupt:
        # After the progress bar's unfinished line: a newline, then the one line.
        sys.stderr.write("\n" + interrupted_message(args) + "\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
