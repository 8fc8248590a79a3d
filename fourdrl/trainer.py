"""GRPO with latent imagery on upstream TRL's `GRPOTrainer` (spec fourdrl.md sections 3, 5, 11, 13).

`LatentGRPOTrainer` keeps TRL's loop, its sampler (prompts sharded across ranks, G adjacent copies of
each), rewards, group-normalised advantages, loss, checkpoints and logging. It changes only what TRL
cannot know about a model that imagines in latent space and reads video:

- rollouts (TRL's `rollout_func` hook -> `latent_rollout`): each prompt's frames and question go
  through the one prompt format (`dift.core.conversation`) and processor call (`dift.core.inputs`);
  `dift.core.generation.generate_with_latents` samples G completions per prompt with per-row latent
  state and every sampling field explicit, from one vision encode and prefill per prompt
  (`group_size`), recording the vector fed at every `<|latent_pad|>` (`--rollout_engine`: the same
  completions from `dift.core.engine`, one slot per completion);
- the loss mask: TRL's loss-only mask (`env_mask`) is 0 at the pads, `<|latent_end|>` and (unless
  `latent_start_in_loss`) `<|latent_start|>`: policy gradient on text tokens; attention keeps them;
- log-probs (policy, old, reference): the replay forward (`dift.core.replay`) with each row's video and
  recorded vectors, on the unwrapped latent model, with a memory-bounded head;
- the reference: a frozen copy of the initial policy in our latent class (with LoRA: the policy with its
  adapters disabled, as TRL does);
- metrics: latent blocks per completion, replay agreement (|replayed - sampling| log-prob on text tokens:
  the live guard against silent drift), and seconds of rollout / log-prob forwards / update.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, unwrap_model_for_generation

from dift.core.conversation import render_generation_prompt
from dift.core.engine import engine_for
from dift.core.generation import SamplingConfig, decode_answer_text, generate_with_latents
from dift.core.inputs import encode_batch
from dift.core.latent_config import read_latent_config
from dift.core.replay import replay_logprobs
from dift.core.tokens import LatentTokenIds
from dift.core.training_checkpoint import load_checkpoint_weights, mark_complete, unmark

from .data import load_rl_frames, prompt_frames_and_question

log = logging.getLogger(__name__)
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class ReplayRow:
    """What the replay forward needs of one completion besides its ids: its prompt's video tensors
    (one object shared by the G rows of a group) and the vectors fed at its `<|latent_pad|>` slots."""

    video: dict[str, torch.Tensor]
    latent_vectors: torch.Tensor  # (n_pads, hidden) float32


# ---------------------------------------------------------------------------------------------
# Pure helpers


def text_token_mask(completion_ids: torch.Tensor, token_ids: LatentTokenIds, start_in_loss: bool = False) -> torch.Tensor:
    """True at the tokens that take policy gradient: all but the latent pads and `<|latent_end|>`, and
    `<|latent_start|>` too unless `start_in_loss`."""
    excluded = [token_ids.pad, token_ids.end] + ([] if start_in_loss else [token_ids.start])
    return ~torch.isin(completion_ids, torch.tensor(excluded, device=completion_ids.device))


def unique_prompts(prompts: Sequence, group_size: int) -> list:
    """The distinct prompts of a rollout batch, which holds each one `group_size` times, adjacent
    (TRL's RepeatSampler order); anything else is an error."""
    if len(prompts) % group_size:
        raise ValueError(f"{len(prompts)} rollout rows are not whole groups of {group_size}")
    unique = [prompts[i] for i in range(0, len(prompts), group_size)]
    for u, prompt in enumerate(unique):
        if any(p != prompt for p in prompts[u * group_size:(u + 1) * group_size]):
            raise ValueError(f"rollout rows {u * group_size}-{(u + 1) * group_size - 1} are not copies of one prompt")
    return unique


def split_videos(inputs) -> list[dict[str, torch.Tensor]]:
    """Per prompt, its own video tensors from a processor batch with one video per prompt (the
    batch's `pixel_values_videos` is flat over all videos' patches)."""
    if inputs.get("pixel_values") is not None or inputs.get("video_grid_thw") is None:
        raise ValueError("RL prompts must each hold one video (frame list) and no image")
    grids = inputs["video_grid_thw"]
    if grids.shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(f"{grids.shape[0]} videos for {inputs['input_ids'].shape[0]} prompts")
    pixels = torch.split(inputs["pixel_values_videos"], grids.prod(dim=-1).tolist())
    seconds = inputs.get("second_per_grid_ts")
    return [{"pixel_values_videos": p, "video_grid_thw": grids[i:i + 1],
             **({} if seconds is None else {"second_per_grid_ts": seconds[i:i + 1]})} for i, p in enumerate(pixels)]


def merge_videos(videos: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse of `split_videos` for a list of rows (a group's rows repeat their prompt's tensors)."""
    return {key: torch.cat([v[key] for v in videos]) for key in VIDEO_KEYS if key in videos[0]}


def latent_core(model):
    """Our latent model inside a PEFT wrapper (LoRA layers sit inside it, so calling it runs them)."""
    return model.get_base_model() if is_peft_model(model) else model


def _rollout_func(prompts: list, trainer: LatentGRPOTrainer) -> dict[str, list]:
    # TRL calls rollout_func(prompts, trainer); the rollout is the trainer's own method.
    return trainer.latent_rollout(prompts)


# ---------------------------------------------------------------------------------------------
# The trainer


class LatentGRPOTrainer(GRPOTrainer):
    """GRPO whose rollouts imagine and whose forwards replay what was imagined (module docstring).

    `rollout_logits_processor(step, rows, scores) -> scores` is handed to `generate_with_latents`
    (tests use it to force latent blocks); None in training. With `--rollout_engine` it goes to the
    engine, which passes `step` per slot (a tensor; `dift.core.engine.Engine.run`).
    """

    def __init__(self, model, reward_funcs, args, train_dataset, processing_class, peft_config=None,
                 callbacks=None):
        # Parent: with beta > 0 builds the reference from config.architectures, i.e. the upstream
        # Qwen2.5-VL class, whose forward silently ignores latent vectors. Ours: the parent builds none
        # (beta 0 during its __init__) and the reference is a frozen copy of the initial policy.
        beta = args.beta
        reference = None
        if beta != 0.0 and peft_config is None:
            reference = copy.deepcopy(model).requires_grad_(False).eval()
        args.beta = 0.0
        try:
            with warnings.catch_warnings():  # the rollout_func hook is marked experimental in TRL 1.16
                warnings.filterwarnings("ignore", message=".*rollout_func.*experimental")
                super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                                 processing_class=processing_class, callbacks=callbacks, peft_config=peft_config,
                                 rollout_func=_rollout_func)
        finally:
            args.beta = beta
        self.beta = beta
        if reference is not None:
            self.ref_model = (prepare_deepspeed(reference, self.accelerator) if self.is_deepspeed_enabled
                              else self.accelerator.prepare_model(reference, evaluation_mode=True))

        core = latent_core(self.model)
        self.latent_token_ids = LatentTokenIds.from_tokenizer(self.processing_class.tokenizer)
        self.latent_size = read_latent_config(core.config).latent_size
        self.sampling = SamplingConfig(max_new_tokens=self.max_completion_length, do_sample=True,
                                       temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0,
                                       repetition_penalty=self.repetition_penalty)
        self.rollout_logits_processor: Callable | None = None
        self._replay_rows: list[ReplayRow] | None = None  # the rows the next log-prob forward scores
        self._agreement_reference: torch.Tensor | None = None  # their sampling log-probs, when on-policy
        self._seconds = {"rollout": 0.0, "logprobs": 0.0}

    # -- rollouts ------------------------------------------------------------------------------

    def latent_rollout(self, prompts: list) -> dict[str, list]:
        """TRL's `rollout_func`: G latent-aware completions of each prompt (rows arrive as G adjacent
        copies). Returns what TRL needs (prompt/completion ids, sampling log-probs, the loss-only
        `env_mask`) and `completion_text` for the rewards; keeps the replay inputs for the forwards."""
        started = time.perf_counter()
        group = self.num_generations if self.model.training else self.num_generations_eval
        visuals, texts = [], []
        for prompt in unique_prompts(prompts, group):
            frames, question = prompt_frames_and_question(prompt)
            visuals.append(load_rl_frames(frames, self.args.max_frame_side))
            texts.append(render_generation_prompt(self.processing_class, visuals[-1], question))
        inputs = encode_batch(self.processing_class, texts, visuals, padding_side="left")
        seeds = torch.randint(0, 2**62, (len(prompts),)).tolist()  # per row; TRL seeds each rank differently
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
                                         ) as unwrapped:
            core = latent_core(unwrapped)
            if self.args.rollout_engine:  # one slot per completion; compiled (CUDA graphs) on CUDA
                engine = engine_for(core, self.latent_token_ids, self.latent_size, slots=len(prompts))
                results = engine.generate(inputs, self.sampling, seeds=seeds, group_size=group,
                                          logits_processor=self.rollout_logits_processor)
            else:
                results = generate_with_latents(core, inputs, self.latent_token_ids, self.latent_size, self.sampling,
                                                seeds=seeds, group_size=group,
                                                logits_processor=self.rollout_logits_processor)

        device = self.accelerator.device
        videos = [{k: v.to(device) for k, v in video.items()} for video in split_videos(inputs)]
        self._replay_rows = [ReplayRow(video=videos[i // group], latent_vectors=r.latent_vectors)
                             for i, r in enumerate(results)]
        prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        completion_ids = [r.token_ids for r in results]
        env_mask = [text_token_mask(torch.tensor(ids, dtype=torch.long), self.latent_token_ids,
                                    self.args.latent_start_in_loss).int().tolist() for ids in completion_ids]
        self._log_latent_blocks(completion_ids)
        self._seconds["rollout"] += time.perf_counter() - started
        tokenizer = self.processing_class.tokenizer
        return {"prompt_ids": [prompt_ids[i // group] for i in range(len(results))],
                "completion_ids": completion_ids,
                "logprobs": [r.logprobs.tolist() for r in results],
                "env_mask": env_mask,
                "completion_text": [decode_answer_text(tokenizer, ids) for ids in completion_ids]}

    def _log_latent_blocks(self, completion_ids: list[list[int]]) -> None:
        # Every emitted <|latent_start|> opens a block (one sampled inside a block is discarded).
        blocks = torch.tensor([ids.count(self.latent_token_ids.start) for ids in completion_ids],
                              dtype=torch.float32, device=self.accelerator.device)
        blocks = self.accelerator.gather(blocks)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["completions/latent_blocks_mean"].append(blocks.mean().item())
        self._metrics[mode]["completions/with_latent_frac"].append((blocks > 0).float().mean().item())

    # -- overrides -----------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        # Parent: rollout (our rollout_func), old/reference log-probs through the hook below, rewards and
        # group advantages; returns the batch as per-row tensors, which would drop each row's video and
        # latent vectors. Ours adds them as a per-row list, which _prepare_inputs shuffles and splits with
        # the other rows.
        output = super()._generate_and_score_completions(inputs)
        output["replay_rows"], self._replay_rows = self._replay_rows, None
        return output

    def _compute_loss(self, model, inputs):
        # Parent: scores the batch with _get_per_token_logps_and_entropies(model, ids, masks, ...), whose
        # signature has no slot for a row's video and latent vectors. Ours hands the batch's replay rows
        # (and, while the batch is on-policy, its sampling log-probs for the agreement metric) to that
        # hook, then runs the parent unchanged.
        self._replay_rows = inputs["replay_rows"]
        if inputs.get("old_per_token_logps") is None:  # TRL's sign that the weights are those that sampled
            self._agreement_reference = inputs.get("sampling_per_token_logps")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._replay_rows = self._agreement_reference = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **vision_kwargs):
        # Parent: re-embeds the ids (the static <|latent_pad|> embedding in every latent slot), takes pixels
        # from image columns only, and runs a fused head patched into model.forward that skips our latent
        # scatter. Ours: the replay forward on the unwrapped latent model, with each row's video and
        # recorded vectors, and a memory-bounded head; log_softmax(logits / temperature) as sampled.
        rows = self._replay_rows
        if rows is None or len(rows) != input_ids.shape[0]:
            raise RuntimeError(f"{input_ids.shape[0]} rows to score but {0 if rows is None else len(rows)} replay rows")
        started = time.perf_counter()
        core = latent_core(self.accelerator.unwrap_model(model))
        prompt_len = input_ids.shape[1] - logits_to_keep
        batch_size = batch_size or input_ids.shape[0]
        vectors = [r.latent_vectors for r in rows]
        if not self.args.latent_replay:  # the ablation: the static <|latent_pad|> embedding, as the original
            static = core.get_input_embeddings().weight[self.latent_token_ids.pad].detach()
            vectors = [static.expand(v.shape[0], -1) for v in vectors]
        logps, entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            prompt = {"input_ids": input_ids[chunk, :prompt_len], "attention_mask": attention_mask[chunk, :prompt_len],
                      **merge_videos([r.video for r in rows[chunk]])}
            with self.accelerator.autocast():
                out = replay_logprobs(core, prompt, input_ids[chunk, prompt_len:], vectors[chunk],
                                      temperature=self.temperature, completion_mask=attention_mask[chunk, prompt_len:],
                                      with_entropy=compute_entropy)
            logps.append(out.logprobs)
            entropies.append(out.entropy)
        logps = torch.cat(logps)
        if self._agreement_reference is not None:
            self._log_replay_agreement(logps, input_ids[:, prompt_len:], attention_mask[:, prompt_len:])
        if not torch.is_grad_enabled():  # old and reference log-probs; the policy's forward is part of the update
            self._seconds["logprobs"] += time.perf_counter() - started
        return logps, torch.cat(entropies) if compute_entropy else None, None

    def _log_replay_agreement(self, logps: torch.Tensor, completion_ids: torch.Tensor, mask: torch.Tensor) -> None:
        """max and mean |replayed - sampling| log-prob over the text tokens of the step, all ranks."""
        text = mask.bool() & text_token_mask(completion_ids, self.latent_token_ids)
        diff = (logps.detach() - self._agreement_reference).abs()[text]
        local = torch.stack([diff.max() if diff.numel() else diff.new_zeros(()), diff.sum(),
                             diff.new_tensor(float(diff.numel()))])
        totals = self.accelerator.gather(local[None]).view(-1, 3)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["replay/max_abs_logprob_diff"].append(totals[:, 0].max().item())
        self._metrics[mode]["replay/mean_abs_logprob_diff"].append((totals[:, 1].sum() / totals[:, 2].sum().clamp(min=1)).item())

    def training_step(self, model, inputs, num_items_in_batch):
        # Parent: one micro-step (rollout and scoring inside _prepare_inputs, then loss and backward), timed
        # whole as step_time. Ours also logs its split: rollout, log-prob forwards without gradient (old,
        # reference), and the rest, mostly the policy forward and backward (the update).
        self._seconds = {"rollout": 0.0, "logprobs": 0.0}
        started = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        total = time.perf_counter() - started
        for name, seconds in self._seconds.items():
            self._metrics["train"][f"time/{name}"].append(seconds)
        self._metrics["train"]["time/update"].append(total - sum(self._seconds.values()))
        return loss

    # -- checkpoints ---------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        # Parent: writes checkpoint-N in place (model, optimizer, scheduler, RNG, trainer state). Ours
        # clears a stale completion marker first (a step rewritten after a resume) and marks the folder
        # complete once every rank is done, so a save cut short is never resumed from.
        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            unmark(folder)
        self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(folder, self.state.global_step)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Parent: `load_state_dict(strict=False)` of the file's raw keys, which are in the checkpoint
        # format (`visual.*`, `model.layers.*`) and match nothing in the live model: training would go
        # on from the initial weights. Ours renames as from_pretrained does (a mismatch is an error).
        # LoRA checkpoints hold adapters only, which the parent loads by their own names.
        target = model if model is not None else self.model
        if is_peft_model(target):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        n = load_checkpoint_weights(target, resume_from_checkpoint)
        log.info("loaded %d weight tensors from %s", n, resume_from_checkpoint)
