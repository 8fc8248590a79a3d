"""The DIFT batch (spec model_and_dift.md section 3), built with one processor pass and tensor ops.

The original renders the chat three times and runs the processor three times (user view, assistant
view, full view), then rewrites ids, labels and masks with per-token Python loops. Here the
training text is rendered once with each `<output_image>` already a latent block of exactly
`latent_size` pads, tokenised with the user's video or image in one processor call, and the helper
images go through the image processor once. Labels and masks are whole-tensor operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conversation import count_output_images, render_training_text
from .inputs import encode_batch, encode_helper_images
from .latent_ops import IGNORE_INDEX, build_image_out_mask
from .tokens import LatentTokenIds


def assistant_token_id(tokenizer) -> int:
    ids = tokenizer.encode("assistant", add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"'assistant' is not a single token in this tokenizer ({ids})")
    return ids[0]


def build_labels(input_ids: torch.Tensor, im_start_id: int, assistant_id: int,
                 ignored_ids: tuple[int, ...]) -> torch.Tensor:
    """Unshifted labels: -100 up to and including the first `<|im_start|>` `assistant` pair of each
    row (the whole row if absent), and at every id in `ignored_ids` (padding, latent pads)."""
    pair = (input_ids[:, :-1] == im_start_id) & (input_ids[:, 1:] == assistant_id)
    has_pair = pair.any(dim=1)
    first = pair.int().argmax(dim=1)  # index of <|im_start|>; `assistant` is at first + 1
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = (positions[None, :] > (first + 1)[:, None]) & has_pair[:, None]
    keep &= ~torch.isin(input_ids, torch.tensor(ignored_ids, device=input_ids.device))
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


@dataclass
class DIFTCollator:
    """Samples -> a DIFT training batch.

    Keys in (per sample): `visual` (list of PIL frames, or one PIL image), `question` (without the
    suffix), `text_output` (CoT with one `<output_image>` per helper image), `helper_images`
    (list of PIL). Keys out: input_ids, attention_mask, mm_token_type_ids, labels, image_out_mask,
    pixel_values_videos/video_grid_thw/second_per_grid_ts and/or pixel_values/image_grid_thw,
    pixel_values_latent, image_grid_thw_latent.
    """

    processor: object
    latent_size: int
    token_ids: LatentTokenIds

    def __post_init__(self):
        self._assistant_id = assistant_token_id(self.processor.tokenizer)

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        helper_images = []
        for i, s in enumerate(samples):
            n = count_output_images(s["text_output"])
            if n != len(s["helper_images"]):
                where = s.get("source", f"sample {i}")
                raise ValueError(f"{where}: text_output has {n} <output_image> but {len(s['helper_images'])} helper images")
            helper_images.extend(s["helper_images"])
        texts = [render_training_text(self.processor, s["visual"], s["question"], s["text_output"], self.latent_size)
                 for s in samples]
        batch = dict(encode_batch(self.processor, texts, [s["visual"] for s in samples], padding_side="right"))
        ids = batch["input_ids"]
        t = self.token_ids
        batch["labels"] = build_labels(ids, t.im_start, self._assistant_id, ignored_ids=(t.text_pad, t.pad))
        batch["image_out_mask"] = build_image_out_mask(ids, t.pad, t.start)
        if helper_images:
            batch.update(encode_helper_images(self.processor, helper_images))
        return batch
