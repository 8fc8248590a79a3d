"""The latent-imagery Qwen2.5-VL: upstream `Qwen2_5_VLForConditionalGeneration` plus latent slots.

Differences from the parent, all in `forward`:
- helper images (`pixel_values_latent`, `image_grid_thw_latent`) go through the frozen vision
  tower, are compressed to `latent_size` vectors each and put at the `<|latent_pad|>` slots
  (teacher forcing); or recorded vectors (`latent_hidden_states`) are put there (replay);
- vision features are always computed under no-grad (the tower, merger included, is frozen);
- M-RoPE positions follow the original's rule (`dift.core.positions`): the inner model's
  `get_rope_index` is replaced, so every path that builds positions (this forward without
  `position_ids`, upstream `generate()`) uses it;
- with `labels`, the loss is `ce_loss_weight * CE + sim_loss_weight * sim` (spec section 4),
  and logits are computed only at supervised positions (a 151,936-column float32 matrix over a
  whole video prompt is the largest tensor of a step and is never needed);
- a NaN loss or a CUDA OOM returns a zero loss still attached to every trainable parameter, so
  DDP/DeepSpeed reductions stay in step across ranks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPreTrainedModel
from transformers.utils import ModelOutput
from trl.kernels import ChunkedLogProbFunction

from .latent_config import read_latent_config
from .latent_ops import (
    compress_latent_features,
    latent_similarity_loss,
    scatter_latent_vectors,
    supervised_positions,
)
from .positions import model_position_ids

log = logging.getLogger(__name__)

HEAD_VOCAB_CHUNK = 8192  # vocabulary columns per tile of the memory-bounded log-prob head


@dataclass
class LatentModelOutput(ModelOutput):
    """`loss` is the weighted total; `ce_loss`/`sim_loss` its parts (detached, for logging).
    With labels, `logits` is None and `predicted_ids` holds the argmax prediction for every
    supervised label position (IGNORE elsewhere); without labels, `logits` is the usual tensor."""

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    sim_loss: torch.Tensor | None = None
    num_output_images: int | None = None
    logits: torch.Tensor | None = None
    predicted_ids: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None  # post-norm, last layer
    inputs_embeds: torch.Tensor | None = None  # final input embeddings (latent slots filled)
    cache: object | None = None
    skipped: bool | None = None  # True: the batch was skipped by a guard (NaN loss, OOM)


def mm_token_type_ids_from_ids(input_ids: torch.Tensor, config) -> torch.Tensor:
    """0 text, 1 image, 2 video: what the processor returns, rebuilt from the ids (the collator
    rewrites ids, and generation appends them)."""
    return (input_ids == config.image_token_id).int() + 2 * (input_ids == config.video_token_id).int()


class OriginalRopeQwen2_5_VLModel(Qwen2_5_VLModel):
    """Upstream `Qwen2_5_VLModel` whose M-RoPE positions follow the original's rule."""

    def get_rope_index(self, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
                       second_per_grid_ts=None, attention_mask=None, **kwargs):
        # Parent: the text after a vision block starts at the block start + max(h', w'). Ours: at
        # the block's largest position + 1 (dift.core.positions), as the published checkpoints saw.
        positions, next_position = model_position_ids(self.config, input_ids, mm_token_type_ids, image_grid_thw,
                                                      video_grid_thw, second_per_grid_ts, attention_mask)
        n_real = input_ids.shape[1] if attention_mask is None else attention_mask.sum(dim=-1)
        return positions, (next_position - n_real).unsqueeze(1)


class LatentQwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL that imagines: see the module docstring for what differs from the parent."""

    def __init__(self, config):
        # Parent: the same three lines with upstream's inner model; ours has the original's positions.
        Qwen2_5_VLPreTrainedModel.__init__(self, config)
        self.model = OriginalRopeQwen2_5_VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def train(self, mode: bool = True):
        # Parent: switches every submodule. Ours keeps the frozen vision tower in eval mode, so
        # the Trainer's model.train() never turns it back on.
        super().train(mode)
        self.model.visual.eval()
        return self

    def freeze_vision_tower(self) -> None:
        """Freeze the vision tower including the patch merger (spec section 1)."""
        visual = self.model.visual
        visual.requires_grad_(False)
        visual.eval()
        visual.gradient_checkpointing = False

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def helper_image_latents(self, pixel_values_latent: torch.Tensor, image_grid_thw_latent: torch.Tensor,
                             latent_size: int, strategy: str) -> torch.Tensor:
        """(n_images * latent_size, D) target vectors for the helper images, in output order."""
        features = self.model.get_image_features(pixel_values_latent, image_grid_thw_latent,
                                                 return_dict=True).pooler_output
        return torch.cat([compress_latent_features(f, latent_size, strategy) for f in features])

    def zero_loss(self) -> torch.Tensor:
        """0.0 attached to every trainable parameter (their gradients are exact zeros)."""
        params = self.trainable_parameters()
        if not params:
            return torch.zeros((), device=self.device)
        return torch.stack([p.reshape(-1)[:1].sum().float() for p in params]).sum() * 0.0

    def lm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """float32 logits; an untied head multiplies in float32 with autocast off (spec section 4)."""
        if self.config.tie_word_embeddings:
            return self.lm_head(hidden_states).float()
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return F.linear(hidden_states.float(), self.lm_head.weight.float())

    def token_logprobs(self, hidden_states: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                       with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log_softmax(lm_logits(hidden_states) / T)[targets], (N,) float32, and the entropy if asked, for
        (N, hidden) states; the same numbers as `lm_logits` at the same precision, but the (N, vocab)
        matrix is never kept: trl's `ChunkedLogProbFunction` folds vocabulary tiles into a running
        log-sum-exp and recomputes them in backward (a float32 log-softmax kept for backward is 2.5 GB
        per 4,096 tokens of a 151,936-token vocabulary)."""
        outputs = ("entropy",) if with_entropy else ()
        weight, bias = self.lm_head.weight, getattr(self.lm_head, "bias", None)  # (a PEFT wrapper has no bias)
        if self.config.tie_word_embeddings:
            logprobs, entropy, *_ = ChunkedLogProbFunction.apply(hidden_states, weight, bias, targets, temperature,
                                                                  HEAD_VOCAB_CHUNK, None, 1.0, outputs)
            return logprobs, entropy
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):  # an untied head: float32
            logprobs, entropy, *_ = ChunkedLogProbFunction.apply(
                hidden_states.float(), weight.float(), None if bias is None else bias.float(), targets, temperature,
                HEAD_VOCAB_CHUNK, None, 1.0, outputs)
        return logprobs, entropy

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        pixel_values_latent: torch.Tensor | None = None,
        image_grid_thw_latent: torch.LongTensor | None = None,
        image_out_mask: torch.Tensor | None = None,
        latent_hidden_states: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> LatentModelOutput:
        # Parent: embed, scatter vision features, decode, LM head over every position, CE.
        if input_ids is None:
            raise ValueError("LatentQwen2_5_VL.forward needs input_ids (positions and latent slots come from them)")
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        latent = None
        if pixel_values_latent is not None or latent_hidden_states is not None or image_out_mask is not None:
            latent = read_latent_config(self.config)
            slots = input_ids == latent.latent_token_id
            if pixel_values_latent is not None:
                if image_grid_thw_latent is None:
                    raise ValueError("pixel_values_latent given without image_grid_thw_latent")
                n_images = image_grid_thw_latent.shape[0]
                n_blocks = int((input_ids == latent.latent_start_id).sum())
                n_slots = int(slots.sum())
                if n_images != n_blocks or n_slots != n_images * latent.latent_size:
                    raise ValueError(
                        f"batch has {n_images} helper images but {n_blocks} latent blocks with {n_slots} "
                        f"<|latent_pad|> tokens (expected {n_images} blocks of latent_size={latent.latent_size})")
                targets = self.helper_image_latents(pixel_values_latent, image_grid_thw_latent,
                                                    latent.latent_size, latent.compress_strategy)
                inputs_embeds = scatter_latent_vectors(inputs_embeds, slots, targets, "helper-image latents")
            elif latent_hidden_states is not None:
                inputs_embeds = scatter_latent_vectors(inputs_embeds, slots, latent_hidden_states,
                                                       "latent_hidden_states")

        if mm_token_type_ids is None:
            mm_token_type_ids = mm_token_type_ids_from_ids(input_ids, self.config)
        if position_ids is None and (cache is None or cache.get_seq_length() == 0):
            # Parent: positions from upstream's rule, and plain 0..T-1 for a text-only batch
            # (padding ignored). Ours: the original's rule over the real tokens, always.
            position_ids, _ = model_position_ids(self.config, input_ids, mm_token_type_ids, image_grid_thw,
                                                 video_grid_thw, second_per_grid_ts, attention_mask)
        # Vision features under no-grad: the tower is frozen, and this keeps gradient
        # checkpointing from wrapping a graph-less computation.
        mm_encoder_outputs = {}
        with torch.no_grad():
            if pixel_values is not None:
                mm_encoder_outputs["image"] = self.model.get_image_features(pixel_values, image_grid_thw,
                                                                            return_dict=True)
            if pixel_values_videos is not None:
                mm_encoder_outputs["video"] = self.model.get_video_features(pixel_values_videos, video_grid_thw,
                                                                            return_dict=True)

        if labels is None:
            outputs = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                 position_ids=position_ids, cache=cache, use_cache=use_cache,
                                 image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                                 second_per_grid_ts=second_per_grid_ts, mm_token_type_ids=mm_token_type_ids,
                                 mm_encoder_outputs=mm_encoder_outputs or None, **kwargs)
            hidden = outputs.last_hidden_state
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            return LatentModelOutput(logits=self.lm_logits(kept), last_hidden_state=hidden,
                                     inputs_embeds=inputs_embeds, cache=outputs.cache)

        settings = latent or read_latent_config(self.config)
        try:
            outputs = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False,
                                 image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                                 second_per_grid_ts=second_per_grid_ts, mm_token_type_ids=mm_token_type_ids,
                                 mm_encoder_outputs=mm_encoder_outputs or None, **kwargs)
            hidden = outputs.last_hidden_state
            (pb, pt), (tb, tt) = supervised_positions(labels)
            logits = self.lm_logits(hidden[pb, pt])
            ce = F.cross_entropy(logits, labels[tb, tt])
            sim, n_images = (hidden.new_zeros((), dtype=torch.float32), 0)
            if image_out_mask is not None:
                sim, n_images = latent_similarity_loss(hidden, inputs_embeds, image_out_mask, settings.latent_size)
            total = settings.ce_loss_weight * ce + settings.sim_loss_weight * sim
        except torch.OutOfMemoryError:
            log.warning("CUDA out of memory in the forward: batch skipped (zero loss)")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            zero = self.zero_loss()
            return LatentModelOutput(loss=zero, ce_loss=zero.detach(), sim_loss=zero.detach(), num_output_images=0,
                                     skipped=True)

        predicted = torch.full_like(labels, -100)
        predicted[tb, tt] = logits.detach().argmax(dim=-1)
        if not torch.isfinite(ce) or not torch.isfinite(total):
            log.warning("non-finite loss (ce=%s, total=%s): batch skipped (zero loss)", ce.item(), total.item())
            return LatentModelOutput(loss=self.zero_loss(), ce_loss=ce.detach(), sim_loss=sim.detach(),
                                     num_output_images=n_images, skipped=True, predicted_ids=predicted)
        return LatentModelOutput(loss=total, ce_loss=ce.detach(), sim_loss=sim.detach(), num_output_images=n_images,
                                 skipped=False, predicted_ids=predicted, last_hidden_state=hidden,
                                 inputs_embeds=inputs_embeds)


# transformers 5 renames checkpoint keys (4.50's `visual.*`, `model.layers.*`) through a mapping it
# looks up by class name, and skips classes defined outside the library unless registered: give
# ours the parent's mapping, so the original authors' checkpoints load.
register_checkpoint_conversion_mapping(
    LatentQwen2_5_VL.__name__, get_checkpoint_conversion_mapping(Qwen2_5_VLForConditionalGeneration.__name__),
    overwrite=True)
