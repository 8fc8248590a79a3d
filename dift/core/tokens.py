"""The special tokens: Qwen2.5-VL's own 22 and the three latent-imagery tokens 4DThinker adds.

This module owns every token *name*. Token *ids* are data: they are read from the tokenizer or
the config (`LatentTokenIds.from_tokenizer`), never written as literals anywhere in the project.
"""

from __future__ import annotations

from dataclasses import dataclass

# Qwen2.5-VL's special tokens, in the id order of the real tokenizer (151643..151664).
QWEN2_5_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# The latent-imagery tokens, added in this order (ids 151665, 151666, 151667 with the real vocabulary).
LATENT_PAD = "<|latent_pad|>"
LATENT_START = "<|latent_start|>"
LATENT_END = "<|latent_end|>"
LATENT_TOKENS: tuple[str, ...] = (LATENT_PAD, LATENT_START, LATENT_END)

# Where helper images go in a chain of thought (training data, preprocess output).
OUTPUT_IMAGE_PLACEHOLDER = "<output_image>"


class LatentCheckpointError(ValueError):
    """A checkpoint, tokenizer or config is not usable as a latent-imagery (DIFT) model."""


def _single_token_id(tokenizer, token: str) -> int | None:
    """The id of `token` if the tokenizer knows it as one token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id)


@dataclass(frozen=True)
class LatentTokenIds:
    """Ids of the three latent tokens plus the chat-structure tokens the stages need."""

    pad: int  # <|latent_pad|>
    start: int  # <|latent_start|>
    end: int  # <|latent_end|>
    im_start: int
    im_end: int
    text_pad: int  # <|endoftext|>, the padding token
    image_pad: int
    video_pad: int
    vision_start: int
    vision_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer, source: str = "tokenizer") -> LatentTokenIds:
        """Read the ids from a tokenizer; a one-line error if the latent tokens are missing."""
        ids = {name: _single_token_id(tokenizer, tok) for name, tok in (
            ("pad", LATENT_PAD), ("start", LATENT_START), ("end", LATENT_END),
            ("im_start", IM_START), ("im_end", IM_END), ("text_pad", PAD_TOKEN),
            ("image_pad", IMAGE_PAD), ("video_pad", VIDEO_PAD),
            ("vision_start", VISION_START), ("vision_end", VISION_END),
        )}
        missing_latent = [tok for tok, key in zip(LATENT_TOKENS, ("pad", "start", "end")) if ids[key] is None]
        if missing_latent:
            raise LatentCheckpointError(
                f"{source}: the latent tokens {', '.join(missing_latent)} are missing "
                "(not a DIFT checkpoint? train one with `python -m dift.train`, or call dift.core.tokens.add_latent_tokens)"
            )
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise LatentCheckpointError(f"{source}: not a Qwen2.5-VL tokenizer (missing special tokens: {missing})")
        return cls(**ids)

    @property
    def latent(self) -> tuple[int, int, int]:
        return (self.pad, self.start, self.end)


def add_latent_tokens(tokenizer, model=None) -> LatentTokenIds:
    """Add the three latent tokens to `tokenizer` (no-op if present) and make room in `model`.

    The embedding matrix is never shrunk: the real checkpoint already has 151,936 (padded) rows,
    more than the 151,668 the tokenizer needs. Exactly the rows of tokens that were *newly added*
    (and the untied head's rows) are set to the mean of the real tokens' rows, because random rows
    destabilise bf16 training. Returns the ids, which are also written into the model config.
    """
    existing = {tok for tok in LATENT_TOKENS if _single_token_id(tokenizer, tok) is not None}
    to_add = [tok for tok in LATENT_TOKENS if tok not in existing]
    if to_add:
        if existing:
            raise LatentCheckpointError(f"tokenizer has only some latent tokens ({sorted(existing)}); refusing to mix")
        tokenizer.add_special_tokens({"additional_special_tokens": list(LATENT_TOKENS)},
                                     replace_extra_special_tokens=False)
    ids = LatentTokenIds.from_tokenizer(tokenizer)
    if model is None:
        return ids

    import torch

    embeddings = model.get_input_embeddings()
    needed_rows = max(ids.latent) + 1
    if embeddings.weight.shape[0] < needed_rows:
        # resize_token_embeddings(pad_to_multiple_of=...) can shrink a padded vocabulary, so ask
        # for exactly max(current, needed) rows and nothing else.
        model.resize_token_embeddings(needed_rows, mean_resizing=False)
    if to_add:
        new_ids = torch.tensor(sorted(ids.latent))
        n_real = min(new_ids).item()  # every id below the first added token is a real token
        with torch.no_grad():
            for matrix in _embedding_like_matrices(model):
                mean = matrix[:n_real].float().mean(dim=0)
                matrix[new_ids] = mean.to(matrix.dtype)
    model.config.latent_token_id = ids.pad
    model.config.latent_start_id = ids.start
    model.config.latent_end_id = ids.end
    return ids


def _embedding_like_matrices(model) -> list:
    """The input embedding weight, and the output head weight if it is not tied to it."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    mats = [emb]
    if out is not None and out.weight.data_ptr() != emb.data_ptr():
        mats.append(out.weight)
    return mats
