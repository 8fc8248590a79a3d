"""`python -m dift.train`: Dynamic-Imagery Fine-Tuning (DIFT) of Qwen2.5-VL.

    python -m dift.train --exp_name NAME --model MODEL --data_path dift_data.jsonl [flags]
    python -m dift.train --config configs/dift_3b.yaml [flags that override it]
    torchrun --nproc_per_node 2 -m dift.train ... --use_cpu --deepspeed_config configs/ds_zero2.json
    deepspeed --num_gpus 8 --module dift.train ... --deepspeed_config configs/ds_zero2.json

Flags are the original launcher's (`--epochs`, `--batch_size`, `--latent_size`, `--ce_loss_weight`,
...), with the Hugging Face names accepted beside them (`--model_name_or_path`, `--num_train_epochs`,
`--per_device_train_batch_size`, `--run_name`, `--deepspeed`), plus a few of ours (`--image_root`,
`--skip_bad_records`, `--max_steps`, `--bf16/--no_bf16`, `--report_to`, `--resume_from_checkpoint`);
`--help` lists all. Outputs under OUTPUT_DIR/EXP_NAME/: `checkpoints/` (step checkpoints
`checkpoint-N`, the final model in `checkpoints/` itself; each with the full processor), `log.txt`,
`tensorboard/`. A step checkpoint counts once its completion marker is written;
`--resume_from_checkpoint true` takes the newest complete one and says which incomplete ones it
skipped. Exit codes: 0 trained, 1 failed (one line), 2 bad flag, 130 interrupted (one line: the
checkpoint kept and how to resume).

This module holds the flags (light: `--help` answers before torch is imported); `dift.recipe` runs
the training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .core.cli import build_parser, parse_cli_args, require_path, run_cli
from .core.frames import MAX_FRAMES
from .core.latent_config import COMPRESS_STRATEGIES, DEFAULTS

PROG = "python -m dift.train"
# The original's --task choices. Only `4dthinker` added the output-format suffix there; here the
# suffix is always added (one conversation format for training, RL, evaluation and inference).
TASKS = ("vsp-spatial-reasoning", "vsp-spatial-planning", "blink-jigsaw", "sat", "4dthinker")
CHECKPOINTS, LOG_FILE, TENSORBOARD = "checkpoints", "log.txt", "tensorboard"


@dataclass
class ModelArguments:
    model: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={
        "help": "base Qwen2.5-VL checkpoint (Hub id or folder); latent tokens are added if missing",
        "aliases": ["--model_name_or_path"]})
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
    exp_name: str = field(metadata={"help": "experiment name (required): outputs go to OUTPUT_DIR/EXP_NAME/",
                                    "aliases": ["--run_name"]})
    output_dir: str = field(default="./outputs", metadata={"help": "root folder of all experiments"})
    epochs: float = field(default=10.0, metadata={"help": "training epochs (the launchers use 1)",
                                                  "aliases": ["--num_train_epochs"]})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (overrides --epochs if > 0)"})
    learning_rate: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warmup steps, then linear decay to 0"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=1, metadata={"help": "samples per device per micro-batch",
                                                 "aliases": ["--per_device_train_batch_size"]})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    logging_steps: int = field(default=20, metadata={
        "help": "log losses (TensorBoard, log.txt, a decoded sample) every N optimizer steps, step 0 included"})
    save_steps: int = field(default=1000, metadata={"help": "write checkpoints/checkpoint-N every N optimizer steps"})
    save_total_limit: int = field(default=1, metadata={"help": "step checkpoints kept (the newest)"})
    deepspeed_config: str | None = field(default=None, metadata={
        "help": "DeepSpeed JSON (configs/ds_zero2.json, ds_zero3.json, ds_zero3_offload.json); its \"auto\" "
                "batch/accumulation/clipping/precision fields are filled from these flags",
        "aliases": ["--deepspeed"]})
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
    report_to: str = field(default="tensorboard", metadata={
        "help": "where metrics go besides log.txt: tensorboard (OUTPUT_DIR/EXP_NAME/tensorboard), wandb (pip install "
                "'fourdthinker[wandb]'; WANDB_MODE=offline works without network), all (both) or none",
        "choices": ["tensorboard", "wandb", "all", "none"]})
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
            raise FileNotFoundError(f"--deepspeed_config {self.deepspeed_config}: no such file")
        if self.resume_from_checkpoint is not None:
            value = self.resume_from_checkpoint.strip()
            if value.lower() in ("", "false", "none", "no"):
                self.resume_from_checkpoint = None
            elif value.lower() not in ("true", "latest") and not Path(value).is_dir():
                raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder {value}")

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


def make_parser():
    return build_parser((ModelArguments, DataArguments, DIFTTrainingArguments), prog=PROG,
                        description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, DIFTTrainingArguments]:
    return parse_cli_args(make_parser(), argv)


def main(argv: list[str] | None = None):
    """Parse the flags and train; returns the trainer (after the final model is saved)."""
    model_args, data_args, args = parse_args(argv)
    require_path("--model", model_args.model, "model")
    require_path("--data_path", data_args.data_path, "file")
    require_path("--image_root", data_args.image_root, "dir")
    from .recipe import train  # torch, transformers, DeepSpeed: after the flags are read

    return train(model_args, data_args, args)


def cli(argv: list[str] | None = None) -> None:
    """`python -m dift.train`, with the project's exit codes (dift.core.cli)."""
    parsed = {}

    def run():
        parsed["args"] = parse_args(argv)[2]
        main(argv)

    def interrupted() -> str:
        from .recipe import interrupted_message

        return interrupted_message(parsed["args"]) if "args" in parsed else "nothing started"

    def input_errors():
        from .core.tokens import LatentCheckpointError
        from .data import DIFTDataError

        return (DIFTDataError, LatentCheckpointError, FileNotFoundError)

    run_cli(PROG, run, interrupted=interrupted, failures=input_errors)


if __name__ == "__main__":
    cli()
