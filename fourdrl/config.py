"""The 4DRL settings: TRL's `GRPOConfig` with the original recipe's defaults and the few fields of
ours (spec fourdrl.md sections 7 and 11).

Defaults that differ from `GRPOConfig` (the original's values, or where the original's behaviour was
a bug, its intent):
- `num_generations` 8, `per_device_train_batch_size` 64 (completions: 8 prompts x G 8; the original's
  `--per_device_train_batch_size 8` counted prompts), `steps_per_generation` 1 (one 64-row rollout per
  micro-step, as the original), `gradient_accumulation_steps` 2, `num_train_epochs` 1;
- `learning_rate` 1e-6, `beta` 0.01 with the classic k3 KL (`use_bias_correction_kl` False), `epsilon`
  0.2, `loss_type` "grpo" (mean over each completion's tokens, then over completions);
- sampling: `temperature` 1.0, `top_p` 0.9, `top_k` 0 (off), `repetition_penalty` 1.0, every field
  used as given (the checkpoint's generation_config.json is never consulted);
  `max_completion_length` 8192;
- `logging_steps` 1, `save_steps` 100 (every checkpoint kept), `seed` and `data_seed` 42,
  `reward_weights` 1.0 0.2 (accuracy, format);
- bf16 on GPUs, off on CPU (where DeepSpeed's CPU engine does not take it).
Checkpoints go to OUTPUT_DIR/EXP_NAME/checkpoints (`output_dir` is the root of all experiments).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import GRPOConfig

from .data import RL_MAX_FRAME_SIDE, RL_MAX_FRAMES

log = logging.getLogger(__name__)

CHECKPOINTS, TENSORBOARD, LOGS = "checkpoints", "tensorboard", "logs"


@dataclass
class FourDRLConfig(GRPOConfig):
    # -- ours
    exp_name: str = field(default="4dthinker_rl_grpo", metadata={
        "help": "experiment name: checkpoints go to OUTPUT_DIR/EXP_NAME/checkpoints, TensorBoard to "
                "OUTPUT_DIR/EXP_NAME/tensorboard, the log to OUTPUT_DIR/EXP_NAME/logs"})
    latent_start_in_loss: bool = field(default=False, metadata={
        "help": "put <|latent_start|> in the policy-gradient loss, so RL learns when to imagine (the original "
                "excluded it, with the pads and <|latent_end|>, which are always excluded)"})
    latent_replay: bool = field(default=True, metadata={
        "help": "put the recorded latent vectors back at the <|latent_pad|> slots in the policy, old and reference "
                "forwards; --no_latent_replay feeds the static pad embedding there, as the original did (an "
                "ablation: log-probs after a latent block then differ from those sampled)"})
    rollout_engine: bool = field(default=False, metadata={
        "help": "generate rollouts with the generation engine (static KV slots, one per completion, the G of a "
                "prompt filled from one prefill; its decode step compiled with CUDA graphs on CUDA): the same "
                "completions as the reference loop; it keeps its KV cache (completions x (prompt + "
                "max_completion_length) positions) allocated between rollouts"})
    max_frames: int = field(default=RL_MAX_FRAMES, metadata={"help": "frames per prompt (uniform subsample)"})
    max_frame_side: int = field(default=RL_MAX_FRAME_SIDE, metadata={
        "help": "longer side of each frame in pixels (bilinear, never upscaled)"})

    # -- defaults that differ from GRPOConfig (see the module docstring)
    output_dir: str = field(default="./model/4drl", metadata={
        "help": "root folder of all experiments (checkpoints go to OUTPUT_DIR/EXP_NAME/checkpoints)"})
    num_generations: int = field(default=8, metadata={"help": "completions per prompt (G)"})
    per_device_train_batch_size: int = field(default=64, metadata={
        "help": "completions per device per micro-step: prompts per device x num_generations (64 = 8 x 8)"})
    steps_per_generation: int | None = field(default=1, metadata={
        "help": "micro-steps served by one rollout (1: a fresh rollout of per_device_train_batch_size rows each "
                "micro-step, as the original)"})
    gradient_accumulation_steps: int = field(default=2, metadata={"help": "micro-steps per optimizer step"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the prompts"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (linear decay, no warmup)"})
    beta: float = field(default=0.01, metadata={"help": "KL coefficient (k3 against the frozen reference)"})
    use_bias_correction_kl: bool = field(default=False, metadata={
        "help": "multiply the k3 KL by the importance ratio (TRL's default True; False is the classic k3)"})
    loss_type: str = field(default="grpo", metadata={
        "help": "grpo: mean over each completion's text tokens, then over completions (the original's)"})
    max_completion_length: int | None = field(default=8192, metadata={"help": "new tokens per completion at most"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    report_to: str = field(default="tensorboard", metadata={
        "help": "where metrics go besides the log: tensorboard (OUTPUT_DIR/EXP_NAME/tensorboard), wandb "
                "(pip install 'fourdthinker[wandb]'; WANDB_MODE=offline works without network), all, none"})
    logging_steps: float = field(default=1, metadata={"help": "log metrics every N optimizer steps"})
    save_steps: float = field(default=100, metadata={"help": "write checkpoints/checkpoint-N every N optimizer steps"})
    data_seed: int | None = field(default=42, metadata={"help": "seed of the prompt order"})
    reward_weights: list[float] | None = field(default_factory=lambda: [1.0, 0.2], metadata={
        "help": "weights of --reward_funcs, in order (accuracy 1.0, format 0.2)"})

    def __post_init__(self):
        if not self.exp_name or "/" in self.exp_name:
            raise ValueError(f"--exp_name must be a non-empty folder name, got {self.exp_name!r}")
        if not torch.cuda.is_available():
            self.use_cpu = True  # the HF Trainer needs it said explicitly for DeepSpeed/gloo on CPU
        if self.use_cpu and self.bf16:
            log.warning("bf16 switched off on CPU")
        if self.use_cpu:
            self.bf16 = False
        self.run_dir = str(Path(self.output_dir) / self.exp_name)
        self.output_dir = str(Path(self.run_dir) / CHECKPOINTS)
        self._check_supported()
        super().__post_init__()

    def _check_supported(self) -> None:
        if self.max_frames < 1 or self.max_frame_side < 28:
            raise ValueError("--max_frames must be >= 1 and --max_frame_side >= 28")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"--per_device_train_batch_size counts completions and must hold whole groups: "
                f"{self.per_device_train_batch_size} is not a multiple of --num_generations {self.num_generations} "
                f"(set it to prompts per device x {self.num_generations})")
        refused = {
            "--use_vllm": self.use_vllm,
            "--use_transformers_continuous_batching": self.use_transformers_continuous_batching,
            "--min_p": self.min_p is not None,
            "--mask_truncated_completions": self.mask_truncated_completions,
            "--use_liger_kernel": self.use_liger_kernel,
        }
        for flag, is_set in refused.items():
            if is_set:
                raise ValueError(f"{flag} is not supported by 4DRL: rollouts are latent-aware generate_with_latents "
                                 "calls and every forward replays their latent vectors")

    @property
    def tensorboard_dir(self) -> Path:
        return Path(self.run_dir) / TENSORBOARD

    @property
    def log_dir(self) -> Path:
        return Path(self.run_dir) / LOGS
