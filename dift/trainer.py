"""The DIFT trainer: the HF `Trainer` with the latent-imagery loss and its logging (spec section 4).

The loss itself lives in the model (`LatentQwen2_5_VL.forward`: CE + latent similarity, with its
NaN/OOM guards); this trainer overrides `compute_loss` to
- check every parameter for NaN/Inf before the forward in global steps 0..`NAN_CHECK_STEPS`
  (a warning, as the original: a broken checkpoint shows up before it is trained on);
- log the loss parts at every logging step, step 0 included, on rank 0: TensorBoard scalars
  `train/total_loss`, `train/ce_loss`, `train/sim_loss`, `train/cos_similarity` (1 - sim),
  `train/num_output_images`, `train/mean_token_accuracy`, and a decoded sample (question, ground
  truth, argmax prediction, latent tokens removed) in log.txt.
Resume and checkpoints (rules in `dift.core.training_checkpoint`):
- `_save_checkpoint` marks each `checkpoint-N` complete after every rank has written its part, and
  rotates old checkpoints itself, after the marker (`keep_checkpoints`, in place of the parent's
  `save_total_limit`, which deletes the older ones before the new one could be marked);
- `_load_from_checkpoint` loads the weights through transformers' checkpoint-key renaming (the
  parent's raw-key load matched nothing and trained on from the base weights).
Records whose images could not be loaded (`--skip_bad_records`) reach `compute_loss` as the batch's
`skipped_records`; they are handed back to the dataset, which counts them against its budget.
Everything else (AdamW, linear warmup schedule, clipping, accumulation, DeepSpeed, the full
processor in every checkpoint) is the parent's, configured by `dift.train`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .core.conversation import OUTPUT_FORMAT_SUFFIX
from .core.latent_ops import IGNORE_INDEX
from .core.tokens import IM_START
from .core.training_checkpoint import load_checkpoint_weights, mark_complete, rotate_checkpoints, unmark
from .data import SKIPPED_RECORDS

log = logging.getLogger(__name__)
# The per-step metric lines go to log.txt only (the console already gets them from the progress bar).
metrics_log = logging.getLogger("dift.metrics")

NAN_CHECK_STEPS = 5  # global steps 0..5 check the parameters before the forward


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding NaN or Inf."""
    return [name for name, p in model.named_parameters() if p.numel() and not bool(torch.isfinite(p).all())]


def decode_sample(tokenizer, input_ids: torch.Tensor, labels: torch.Tensor, predicted_ids: torch.Tensor,
                  im_start_id: int) -> dict[str, str]:
    """One row as text: the user's question (format suffix dropped), the supervised target and the
    argmax prediction at the same positions. Special tokens (latent ones included) are removed."""
    supervised = labels != IGNORE_INDEX
    prompt = input_ids[: int(supervised.int().argmax())] if supervised.any() else input_ids
    starts = (prompt == im_start_id).nonzero().flatten().tolist()
    # The user turn is the one before the assistant's `<|im_start|>`: decode it without its role name.
    user = prompt[starts[-2] + 1: starts[-1]] if len(starts) >= 2 else prompt
    question = tokenizer.decode(user, skip_special_tokens=True).strip().removeprefix("user").strip()
    question = question.removesuffix(OUTPUT_FORMAT_SUFFIX.strip()).strip()
    return dict(question=question,
                ground_truth=tokenizer.decode(labels[supervised], skip_special_tokens=True).strip(),
                prediction=tokenizer.decode(predicted_ids[supervised], skip_special_tokens=True).strip())


class DIFTTrainer(Trainer):
    """`Trainer` for DIFT; see the module docstring. Pass the full processor as `processing_class`
    so every checkpoint carries it (tokenizer with the latent tokens, image and video processors)."""

    # The model's loss is a mean over this micro-batch's supervised tokens (as the original): the
    # parent must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, keep_checkpoints: int | None = None, **kwargs):
        """`keep_checkpoints`: complete step checkpoints kept (the newest); None keeps all."""
        super().__init__(*args, **kwargs)
        if self.args.save_total_limit is not None:
            raise ValueError("DIFTTrainer rotates its checkpoints itself (complete ones only): leave "
                             "TrainingArguments.save_total_limit unset and pass keep_checkpoints")
        self.keep_checkpoints = keep_checkpoints
        # The parent infers from the forward's **kwargs that the model takes `num_items_in_batch`;
        # ours does not (see loss_is_scaled_for_ga), so the parent need not count label tokens.
        self.model_accepts_loss_kwargs = False
        self._last_checked_step = -1
        self._last_logged_step = -1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Parent: forward and take `outputs.loss`. Ours adds the early parameter check and the
        # per-logging-step record of the loss parts; the loss is the model's own.
        step = self.state.global_step
        if model.training and step <= NAN_CHECK_STEPS and step != self._last_checked_step:
            self._last_checked_step = step
            bad = non_finite_parameters(model)
            if bad:
                log.warning("step %d: %d parameter tensor(s) hold NaN/Inf before the forward, e.g. %s",
                            step, len(bad), ", ".join(bad[:5]))
        skipped = inputs.pop(SKIPPED_RECORDS, None)
        if skipped:
            # Counted here, in the training process: DataLoader workers' own counts never come back.
            self.train_dataset.note_unreadable(skipped)
        outputs = model(**inputs)
        if (model.training and step % self.args.logging_steps == 0 and step != self._last_logged_step
                and self.is_world_process_zero()):
            self._last_logged_step = step  # once per optimizer step, not per accumulated micro-batch
            self._log_loss_parts(outputs, inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _log_loss_parts(self, outputs, inputs) -> None:
        sim = float(outputs.sim_loss)
        labels = inputs["labels"]
        metrics = {"total_loss": float(outputs.loss.detach()), "ce_loss": float(outputs.ce_loss), "sim_loss": sim,
                   "cos_similarity": 1.0 - sim, "num_output_images": float(outputs.num_output_images or 0)}
        if outputs.predicted_ids is not None:
            supervised = labels != IGNORE_INDEX
            correct = (outputs.predicted_ids == labels) & supervised
            metrics["mean_token_accuracy"] = float(correct.sum()) / max(1, int(supervised.sum()))
            tokenizer = self.processing_class.tokenizer
            sample = decode_sample(tokenizer, inputs["input_ids"][0].cpu(), labels[0].cpu(),
                                   outputs.predicted_ids[0].cpu(),
                                   tokenizer.convert_tokens_to_ids(IM_START))
            log.info("step %d sample\n  question: %s\n  ground truth: %s\n  prediction: %s",
                     self.state.global_step, sample["question"], sample["ground_truth"], sample["prediction"])
        # Trainer.log sends these through the callbacks: TensorBoard writes them as train/<name>.
        self.log(metrics)

    def save_final_model(self, folder: str | os.PathLike) -> None:
        """The final model (with the processor) and the trainer state into `folder` itself. Written
        into a staging folder first, then each file renamed into place: a kill during the save
        leaves whole files (old or new), never a torn one."""
        folder = Path(folder)
        staging = folder / ".final-model.tmp"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.save_model(str(staging))  # every rank: ZeRO-3 gathers the weights
        if self.args.should_save:
            self.state.save_to_json(str(staging / "trainer_state.json"))
            for path in staging.iterdir():
                os.replace(path, folder / path.name)
            staging.rmdir()
        self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, model, trial):
        # Parent: writes checkpoint-N in place (model, optimizer, scheduler, RNG, trainer state). Ours
        # clears a stale marker first (a step rewritten after a resume), marks the folder complete
        # once every rank is done, and only then deletes old checkpoints.
        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            unmark(folder)
        self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(folder, self.state.global_step)
            for deleted in rotate_checkpoints(self.args.output_dir, self.keep_checkpoints, newest=folder):
                log.info("deleted %s (keeping %s step checkpoint(s))", deleted, self.keep_checkpoints)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Parent: `load_state_dict(strict=False)` of the file's raw keys, which are in the checkpoint
        # format (`visual.*`, `model.layers.*`): nothing matched, a warning, and training went on
        # from the base weights. Ours renames as from_pretrained does, and a mismatch is an error.
        n = load_checkpoint_weights(model if model is not None else self.model, resume_from_checkpoint)
        log.info("loaded %d weight tensors from %s", n, resume_from_checkpoint)


class LogFileCallback(TrainerCallback):
    """Writes every `Trainer.log` record (losses, learning rate, grad norm) to the `dift.metrics`
    logger, which `dift.train` sends to log.txt (rank 0)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            metrics_log.info("step %d: %s", state.global_step,
                             ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()))
