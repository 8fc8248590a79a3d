"""Pure tensor functions of latent imagery: compressing helper-image features to latent vectors,
placing vectors at `<|latent_pad|>` slots, and the DIFT losses. Testable without a model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def compress_latent_features(features: torch.Tensor, latent_size: int, strategy: str = "average") -> torch.Tensor:
    """Compress one helper image's merged vision features (n, D) to (latent_size, D).

    average: drop the last n mod latent_size features, split the rest into latent_size consecutive
    equal groups and average each. truncate: the first latent_size features.
    """
    n = features.shape[0]
    if n < latent_size:
        raise ValueError(f"a helper image has {n} vision features, fewer than latent_size={latent_size}; "
                         "use a larger helper image or a smaller latent_size")
    if strategy == "average":
        group = n // latent_size
        return features[: group * latent_size].reshape(latent_size, group, -1).mean(dim=1)
    if strategy == "truncate":
        return features[:latent_size]
    raise ValueError(f"unknown compress_strategy {strategy!r} (average or truncate)")


def scatter_latent_vectors(inputs_embeds: torch.Tensor, slot_mask: torch.Tensor, vectors: torch.Tensor,
                           what: str = "latent vectors") -> torch.Tensor:
    """Put `vectors` (N, D), in batch-major order, at the N True positions of `slot_mask` (B, T)."""
    n_slots = int(slot_mask.sum())
    if vectors.shape[0] != n_slots:
        raise ValueError(f"{what}: got {vectors.shape[0]} vectors for {n_slots} <|latent_pad|> positions")
    return inputs_embeds.masked_scatter(slot_mask.unsqueeze(-1), vectors.to(inputs_embeds.dtype))


def supervised_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, position) of every supervised label after the causal shift: the logits at t-1
    predict labels[t]. Returns the indices of the predicting positions (t-1) and of the targets (t)."""
    b, t = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return (b, t), (b, t + 1)


def latent_similarity_loss(hidden_states: torch.Tensor, inputs_embeds: torch.Tensor, image_out_mask: torch.Tensor,
                           latent_size: int) -> tuple[torch.Tensor, int]:
    """The DIFT similarity loss (spec section 4).

    For every masked position t, the prediction is the last-layer post-norm hidden state at t-1
    and the target the (detached) input embedding at t; per-token cosine in float32; each
    consecutive run of `latent_size` positions (batch-major) is one image; mean over an image of
    (1 - cos), then mean over images. Returns (loss, number of images).
    """
    b, t = image_out_mask.bool().nonzero(as_tuple=True)
    n = b.numel()
    if n == 0:
        return hidden_states.new_zeros((), dtype=torch.float32), 0
    if n % latent_size:
        raise ValueError(f"image_out_mask marks {n} positions, not a multiple of latent_size={latent_size}")
    if bool((t == 0).any()):
        raise ValueError("image_out_mask marks position 0, which has no preceding hidden state")
    pred = F.normalize(hidden_states[b, t - 1].float(), dim=-1)
    target = F.normalize(inputs_embeds[b, t].detach().float(), dim=-1)
    cos = (pred * target).sum(dim=-1)
    per_image = (1.0 - cos).view(-1, latent_size).mean(dim=1)
    return per_image.mean(), per_image.numel()


def build_image_out_mask(input_ids: torch.Tensor, latent_pad_id: int, latent_start_id: int) -> torch.Tensor:
    """1 at every `<|latent_pad|>` after the first `<|latent_start|>` of its row, else 0."""
    seen_start = (input_ids == latent_start_id).long().cumsum(dim=1) > 0
    return ((input_ids == latent_pad_id) & seen_start).long()
