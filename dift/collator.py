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

from .core.conversation import count_output_images, render_training_text
from .core.inputs import encode_batch, encode_helper_images
from .core.latent_ops import IGNORE_INDEX, build_image_out_mask
from .core.tokens import LatentTokenIds
from .data import SKIPPED_RECORDS


def assistant_token_id(tokenizer) -> int:
    ids = tokenizer.encode("assistant", add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"'assistant' is not a single token in this tokenizer ({ids})")
    return ids[0]


def build_labels(input_ids: torch.Tensor, im_start_id: int, assistant_id: int,
                 ignored_ids: tuple[int, ...]) -> torch.Tensor:
    """Unshifted labels: -100 up to and including the first `<|im_start|>` `assistant` pair of each
    row (the whole row if absent), and at every id in `ignored_ids` (padding, latent pads)."""
    pair = torch.zeros_like(input_ids, dtype=torch.bool)  # full width, so a 1-token row works too
    pair[:, :-1] = (input_ids[:, :-1] == im_start_id) & (input_ids[:, 1:] == assistant_id)
    has_pair = pair.any(dim=1)
    first = pair.int().argmax(dim=1)  # index of <|im_start|>; `assistant` is at first + 1
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    keep = (positions[None, :] > (first + 1)[:, None]) & has_pair[:, None]
    keep &= ~torch.isin(input_ids, torch.tensor(ignored_ids, device=input_ids.device))
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def check_latent_blocks(input_ids: torch.Tensor, token_ids: LatentTokenIds, latent_size: int,
                        expected_blocks: torch.Tensor, sources: list[str]) -> None:
    """Each row must hold exactly its helper-image count of latent blocks, each `<|latent_start|>`
    followed by `latent_size` pads and `<|latent_end|>`. Text that itself contains latent or vision
    special tokens breaks this; the error names the sample instead of failing deep in the model."""
    starts = input_ids == token_ids.start
    ends = input_ids == token_ids.end
    pads = input_ids == token_ids.pad
    # A well-formed block: a start whose next latent_size ids are pads and whose id after them is an end.
    width = latent_size + 2
    if input_ids.shape[1] >= width:
        windows = input_ids.unfold(1, width, 1)  # (B, T - width + 1, width)
        pattern = torch.tensor([token_ids.start] + [token_ids.pad] * latent_size + [token_ids.end])
        good = (windows == pattern).all(dim=-1).sum(dim=1)
    else:
        good = torch.zeros(input_ids.shape[0], dtype=torch.long)
    ok = ((good == expected_blocks) & (starts.sum(1) == expected_blocks) & (ends.sum(1) == expected_blocks)
          & (pads.sum(1) == expected_blocks * latent_size))
    if not bool(ok.all()):
        row = int((~ok).int().argmax())
        raise ValueError(f"{sources[row]}: expected {int(expected_blocks[row])} latent block(s) of {latent_size} "
                         f"<|latent_pad|> but the tokenised text has {int(starts[row].sum())} <|latent_start|>, "
                         f"{int(pads[row].sum())} <|latent_pad|>, {int(ends[row].sum())} <|latent_end|> "
                         "(does the text contain special tokens?)")


@dataclass
class DIFTCollator:
    """Samples -> a DIFT training batch (one processor call + one image-processor call per batch).

    Keys in, per sample (what `dift.data.DIFTJsonlDataset` yields):
      visual         list of PIL frames (a 1 fps video) or one PIL image
      question       question with options, without the output-format suffix (added here)
      text_output    chain of thought with one `<output_image>` per helper image
      helper_images  list of PIL images, in `<output_image>` order
      source         optional, "file:line" for error messages (other keys are ignored)
    Keys out (B rows, right-padded to T tokens):
      input_ids, attention_mask, mm_token_type_ids  (B, T)
      labels          (B, T) unshifted; -100 up to and including `<|im_start|>assistant`, at padding
                      and at `<|latent_pad|>` (see `build_labels`)
      image_out_mask  (B, T) 1 at the `<|latent_pad|>` slots (see `build_image_out_mask`)
      pixel_values_videos, video_grid_thw, second_per_grid_ts (2.0: 1 fps) for video samples;
      pixel_values, image_grid_thw for single-image samples
      pixel_values_latent, image_grid_thw_latent  the helper images, batch-major (absent if none)
      skipped_records the samples' `skipped_records` joined (records replaced because their images
                      failed to load; absent if none): `DIFTTrainer` takes it out before the forward
    """

    processor: object
    latent_size: int
    token_ids: LatentTokenIds

    def __post_init__(self):
        self._assistant_id = assistant_token_id(self.processor.tokenizer)

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        helper_images, counts = [], []
        for i, s in enumerate(samples):
            n = count_output_images(s["text_output"])
            counts.append(n)
            if n != len(s["helper_images"]):
                where = s.get("source", f"sample {i}")
                raise ValueError(f"{where}: text_output has {n} <output_image> but {len(s['helper_images'])} helper images")
            helper_images.extend(s["helper_images"])
        texts = [render_training_text(self.processor, s["visual"], s["question"], s["text_output"], self.latent_size)
                 for s in samples]
        batch = dict(encode_batch(self.processor, texts, [s["visual"] for s in samples], padding_side="right"))
        ids = batch["input_ids"]
        t = self.token_ids
        check_latent_blocks(ids, t, self.latent_size, torch.tensor(counts),
                            [s.get("source", f"sample {i}") for i, s in enumerate(samples)])
        batch["labels"] = build_labels(ids, t.im_start, self._assistant_id, ignored_ids=(t.text_pad, t.pad))
        batch["image_out_mask"] = build_image_out_mask(ids, t.pad, t.start)
        if helper_images:
            batch.update(encode_helper_images(self.processor, helper_images))
        skipped = [record for s in samples for record in s.get(SKIPPED_RECORDS, ())]
        if skipped:
            batch[SKIPPED_RECORDS] = skipped
        return batch
