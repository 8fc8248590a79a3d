"""Loading latent-imagery checkpoints (ours, the original authors', or a base Qwen2.5-VL) and their
processor, with one-line errors for what makes a folder unusable."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from .latent_config import LatentSettings, read_latent_config, set_latent_config
from .model import LatentQwen2_5_VL
from .tokens import LatentCheckpointError, LatentTokenIds, add_latent_tokens

log = logging.getLogger(__name__)

# The real Qwen2.5-VL-Instruct preprocessor_config.json: pixel limits and normalisation. Used to
# build the processor of checkpoints saved without one (the original's DIFT trainer forgot it).
PROCESSOR_MIN_PIXELS = 56 * 56  # 3,136
PROCESSOR_MAX_PIXELS = 28 * 28 * 16384  # 12,845,056
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_default_image_processor() -> Qwen2VLImageProcessor:
    return Qwen2VLImageProcessor(min_pixels=PROCESSOR_MIN_PIXELS, max_pixels=PROCESSOR_MAX_PIXELS, patch_size=14,
                                 temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD)


def build_default_video_processor() -> Qwen2VLVideoProcessor:
    return Qwen2VLVideoProcessor(min_pixels=PROCESSOR_MIN_PIXELS, max_pixels=PROCESSOR_MAX_PIXELS, patch_size=14,
                                 temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                 do_sample_frames=False)


def resolve_model_path(model_path: str, cache_dir: str | None = None, flag: str = "--model_path") -> str:
    """A local checkpoint folder as is; anything else is taken for a Hugging Face Hub id and
    downloaded into `cache_dir` (once). Offline, or for an unknown id, one line says what to pass."""
    if Path(model_path).is_dir():
        return model_path
    if model_path.startswith((".", "/", "~")) or model_path.count("/") != 1:
        raise FileNotFoundError(f"{flag} {model_path}: no such checkpoint folder")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model_path, cache_dir=cache_dir)
    except Exception as err:  # offline, unknown id, gated repo: the hub client's errors span lines
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"{flag} {model_path}: not a local folder, and the Hub download failed "
                                f"({reason[:160]}); pass a local checkpoint folder") from None


def load_processor(path: str | Path) -> Qwen2_5_VLProcessor:
    """The checkpoint's processor; if it has no image-processor config (the original's DIFT
    checkpoints), the real Qwen2.5-VL settings are used and a warning says so."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    if (path / "preprocessor_config.json").exists() or (path / "processor_config.json").exists():
        return AutoProcessor.from_pretrained(path)
    log.warning("%s has no preprocessor_config.json; using Qwen2.5-VL's image/video processor settings", path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Qwen2_5_VLProcessor(image_processor=build_default_image_processor(),
                               video_processor=build_default_video_processor(),
                               tokenizer=tokenizer, chat_template=tokenizer.chat_template)


@dataclass
class LoadedModel:
    model: LatentQwen2_5_VL
    processor: Qwen2_5_VLProcessor
    token_ids: LatentTokenIds
    latent: LatentSettings


def _check_config_token_ids(config, ids: LatentTokenIds, source: str) -> None:
    for field, value in (("latent_token_id", ids.pad), ("latent_start_id", ids.start), ("latent_end_id", ids.end)):
        saved = getattr(config, field, None)
        if saved is not None and int(saved) != value:
            raise LatentCheckpointError(f"{source}: config {field}={saved} but the tokenizer has id {value}")
        setattr(config, field, value)


def load_latent_model(path: str | Path, dtype: torch.dtype | str = "auto", device: str | torch.device | None = None,
                      latent_size: int | None = None, attn_implementation: str | None = None) -> LoadedModel:
    """Load a DIFT/4DRL checkpoint for inference: model (eval), processor, token ids, latent settings.

    The tokenizer must hold the three latent tokens and the config the latent fields; `latent_size`
    overrides the config's (as the original's `--latent_size`).
    """
    path = Path(path)
    source = str(path)
    processor = load_processor(path)
    ids = LatentTokenIds.from_tokenizer(processor.tokenizer, source=f"{source} (tokenizer)")
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = LatentQwen2_5_VL.from_pretrained(path, **kwargs)
    _check_config_token_ids(model.config, ids, source)
    if latent_size is not None:
        set_latent_config(model.config, latent_size=latent_size)
    settings = read_latent_config(model.config, source=f"{source}/config.json")
    n_rows = model.get_input_embeddings().weight.shape[0]
    if n_rows <= max(ids.latent):
        raise LatentCheckpointError(f"{source}: embedding has {n_rows} rows, too few for latent token id {max(ids.latent)}")
    if device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, processor=processor, token_ids=ids, latent=settings)


def prepare_base_model_for_dift(model: LatentQwen2_5_VL, processor, **latent_fields) -> LatentTokenIds:
    """Turn a base Qwen2.5-VL (or resume a DIFT one): add the latent tokens (no-op if present),
    write the latent config fields, freeze the vision tower."""
    ids = add_latent_tokens(processor.tokenizer, model)
    set_latent_config(model.config, **latent_fields)
    model.freeze_vision_tower()
    return ids
