"""Build a tiny random-weight SAM3 checkpoint (transformers' Sam3VideoModel: detector + tracker)
with a real Sam3VideoProcessor, saved with save_pretrained so the masks step loads it exactly as
it loads facebook/sam3: `Sam3Model.from_pretrained(dir)` (per-frame text prompts) or
`Sam3VideoModel.from_pretrained(dir)` (`--tracking`).

The tokenizer is a real CLIPTokenizer over a byte-level vocabulary (256 bytes, each also with CLIP's
end-of-word suffix, plus the two specials) and no merges: no download needed. The detection
thresholds are lowered to 0 so random weights still produce instances (a real checkpoint keeps
SAM3's defaults).

    python scripts/build_tiny_sam3.py --out .cache/tiny-sam3 [--image_size 112 --seed 0]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _byte_level_clip_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_sam3_config(image_size: int = 112, patch_size: int = 14, hidden: int = 128, vocab_size: int = 514,
                     bos_token_id: int = 512, eos_token_id: int = 513, thresholds_zero: bool = True):
    """A Sam3VideoConfig whose every part is small (`hidden`-wide, 1-2 layers). The tracker needs
    hidden > 64: the library hard-codes 64-channel memories and splits object pointers into them
    (with hidden == 64 a 4-D pointer tensor fails to concatenate)."""
    from transformers import (
        Sam3Config,
        Sam3TrackerVideoConfig,
        Sam3VideoConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    grid = image_size // patch_size

    def vision():
        # the backbone must be a config object, not a dict (a dict fails with KeyError: None)
        backbone = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=image_size, patch_size=patch_size,
                                 window_size=max(1, grid // 2), global_attn_indexes=[1], pretrain_image_size=image_size)
        return Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=hidden,
                                backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2])

    small = dict(hidden_size=hidden, num_attention_heads=2, intermediate_size=2 * hidden)
    detector = Sam3Config(
        vision_config=vision(),
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=hidden,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=8, **small),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2),
    )
    tracker = Sam3TrackerVideoConfig(
        vision_config=vision(), prompt_encoder_config=dict(hidden_size=hidden, image_size=image_size, patch_size=patch_size),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=2 * hidden, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=hidden),
        num_maskmem=2, memory_attention_hidden_size=hidden, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * hidden, memory_attention_rope_feat_sizes=[grid, grid],
        memory_encoder_hidden_size=hidden, memory_encoder_output_channels=64,  # the library hard-codes kv_in_dim=64
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden, memory_fuser_intermediate_dim=2 * hidden, image_size=image_size)
    # random weights give every query a score near 0.25: thresholds at 0 keep instances coming, and a
    # cap of 2 tracked objects keeps tracking from adding 8 new tracks on every frame
    extra = dict(score_threshold_detection=0.0, new_det_thresh=0.0, high_conf_thresh=0.0,
                 max_num_objects=2) if thresholds_zero else {}
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=4 * grid,
                           hotstart_delay=0, **extra)


def write_tiny_sam3(out: str | Path, image_size: int = 112, seed: int = 0, full_size: bool = False) -> Path:
    """Save the tiny model (or, with `full_size`, a random model of SAM3's real shapes at 1008 px,
    for benchmarks) and its processor to `out`; returns `out`."""
    import torch
    from transformers import (
        Sam2VideoVideoProcessor,
        Sam3ImageProcessor,
        Sam3VideoConfig,
        Sam3VideoModel,
        Sam3VideoProcessor,
    )

    out = Path(out)
    tokenizer = _byte_level_clip_tokenizer()
    if full_size:
        image_size = 1008
        config = Sam3VideoConfig()  # facebook/sam3's shapes; its CLIP vocabulary is larger than ours
        config.detector_config.text_config.bos_token_id = tokenizer.bos_token_id
        config.detector_config.text_config.eos_token_id = tokenizer.eos_token_id
    else:
        config = tiny_sam3_config(image_size=image_size, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    model.save_pretrained(out)
    mask_side = 4 * (image_size // 14)
    processor = Sam3VideoProcessor(
        image_processor=Sam3ImageProcessor(size={"height": image_size, "width": image_size},
                                           mask_size={"height": mask_side, "width": mask_side}),
        video_processor=Sam2VideoVideoProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    processor.save_pretrained(out)
    log.info("SAM3 (%d parameters, random weights) written to %s", sum(p.numel() for p in model.parameters()), out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_tiny_sam3(args.out, args.image_size, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
