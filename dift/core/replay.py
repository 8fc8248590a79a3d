"""Latent replay: the teacher-forced forward over prompt + completion that puts the recorded latent
vectors back at the `<|latent_pad|>` slots and scores the completion tokens (spec
model_and_dift.md section 5; fourdrl.md sections 5 and 11).

Without replay, the slots would carry the static `<|latent_pad|>` embedding, so every token after
a latent block would be scored in another context than it was sampled in. With it, the per-token
log-probs equal the sampling ones (`GenerationResult.logprobs`), which is what GRPO's ratio and KL
need. Differentiable: RL calls it with gradients on (nothing here runs under no_grad).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .generation import VISION_KEYS, GenerationResult, prompt_positions
from .model import mm_token_type_ids_from_ids


@dataclass
class ReplayOutput:
    logprobs: torch.Tensor  # (B, Lc) float32: log_softmax(logits / T)[completion token]; 0 where mask is False
    mask: torch.Tensor  # (B, Lc) bool: real completion tokens
    entropy: torch.Tensor | None = None  # (B, Lc) float32 entropy of softmax(logits / T), if asked for


def pad_completions(completions: Sequence[Sequence[int]], pad_id: int,
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to a (B, Lc) tensor; returns (ids, mask)."""
    length = max((len(c) for c in completions), default=0)
    ids = torch.full((len(completions), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(completions), length), dtype=torch.bool, device=device)
    for i, c in enumerate(completions):
        ids[i, :len(c)] = torch.as_tensor(list(c), dtype=torch.long, device=device)
        mask[i, :len(c)] = True
    return ids, mask


def replay_logprobs(model, prompt_inputs, completion_ids: torch.Tensor | Sequence[Sequence[int]],
                    latent_vectors: Sequence[torch.Tensor], temperature: float = 1.0,
                    completion_mask: torch.Tensor | None = None, with_entropy: bool = False) -> ReplayOutput:
    """Per-token log-probs of the completions, with the recorded latent vectors replayed.

    prompt_inputs: the LEFT-padded prompt batch the completions were generated from
    (`encode_batch(..., padding_side="left")`, vision tensors included). completion_ids: id lists,
    or a right-padded (B, Lc) tensor with `completion_mask`. latent_vectors: per row, the vectors
    fed at its `<|latent_pad|>` slots in order (`GenerationResult.latent_vectors`). temperature: the
    T of log_softmax(logits / T), as in sampling (1.0 for greedy). Log-probs are computed only at
    completion positions, by the model's memory-bounded head (`LatentQwen2_5_VL.token_logprobs`: no
    (tokens, vocab) matrix is kept for backward).
    """
    device = model.device
    prompt_ids = prompt_inputs["input_ids"].to(device)
    prompt_mask = prompt_inputs["attention_mask"].to(device)
    if not bool(prompt_mask[:, -1].all()):
        raise ValueError("replay_logprobs needs the LEFT-padded prompt batch the completions were generated from")
    latent_pad_id = int(model.config.latent_token_id)
    filler = int(model.config.get_text_config().pad_token_id or 0)  # never attended to nor scored
    if isinstance(completion_ids, torch.Tensor):
        ids = completion_ids.to(device)
        mask = (torch.ones_like(ids, dtype=torch.bool) if completion_mask is None
                else completion_mask.to(device).bool())
        ids = torch.where(mask, ids, filler)
    else:
        ids, mask = pad_completions(completion_ids, filler, device)
    batch, prompt_len = prompt_ids.shape
    if ids.shape[0] != batch or len(latent_vectors) != batch:
        raise ValueError(f"{batch} prompts, {ids.shape[0]} completions and {len(latent_vectors)} latent vector sets")
    for i, vectors in enumerate(latent_vectors):
        n_slots = int((ids[i][mask[i]] == latent_pad_id).sum())
        if vectors.shape[0] != n_slots:
            raise ValueError(f"row {i}: {vectors.shape[0]} latent vectors for {n_slots} <|latent_pad|> tokens")

    # Prompt + completion in one sequence: [left padding, prompt, completion, right padding].
    completion_len = ids.shape[1]
    positions, next_position = prompt_positions(model, {**prompt_inputs, "input_ids": prompt_ids,
                                                        "attention_mask": prompt_mask})
    steps = torch.arange(completion_len, device=device)
    completion_positions = (next_position[:, None] + steps[None, :]).unsqueeze(0).expand(3, -1, -1)
    prompt_types = prompt_inputs.get("mm_token_type_ids")
    if prompt_types is None:
        prompt_types = mm_token_type_ids_from_ids(prompt_ids, model.config)
    vectors = [v for v in latent_vectors if v.shape[0]]
    vision = {k: prompt_inputs[k].to(device) for k in VISION_KEYS if prompt_inputs.get(k) is not None}
    out = model(
        input_ids=torch.cat([prompt_ids, ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask.to(prompt_mask.dtype)], dim=1),
        position_ids=torch.cat([positions, completion_positions], dim=2),
        # Completion tokens are text whatever their ids: only the prompt's vision slots get features.
        mm_token_type_ids=torch.cat([prompt_types.to(device), torch.zeros_like(ids, dtype=prompt_types.dtype)], dim=1),
        latent_hidden_states=torch.cat(vectors).to(device) if vectors else None,
        use_cache=False, logits_to_keep=1, **vision)

    # Position t of the sequence predicts token t + 1: the completion is predicted from prompt_len - 1 on.
    hidden = out.last_hidden_state[:, prompt_len - 1:prompt_len - 1 + completion_len]
    rows, cols = mask.nonzero(as_tuple=True)
    picked, entropy_values = model.token_logprobs(hidden[rows, cols], ids[rows, cols], temperature, with_entropy)
    logprobs = torch.zeros((batch, completion_len), dtype=torch.float32, device=device).index_put((rows, cols), picked)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(logprobs).index_put((rows, cols), entropy_values.detach())
    return ReplayOutput(logprobs=logprobs, mask=mask, entropy=entropy)


def replay_results(model, prompt_inputs, results: Sequence[GenerationResult], temperature: float = 1.0,
                   **kwargs) -> ReplayOutput:
    """`replay_logprobs` for the output of `generate_with_latents` on the same prompt batch."""
    return replay_logprobs(model, prompt_inputs, [r.token_ids for r in results],
                           [r.latent_vectors for r in results], temperature=temperature, **kwargs)
