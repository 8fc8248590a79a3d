import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from dift.collator import DIFTCollator
from dift.core.checkpoint import load_latent_model, prepare_base_model_for_dift
from dift.core.latent_ops import compress_latent_features
from dift.core.model import LatentQwen2_5_VL
from dift.core.tokens import LatentCheckpointError
from scripts.build_tiny_model import write_checkpoint
from scripts.synthetic_media import moving_square_frames


def test_compress_average_drops_the_remainder():
    feats = torch.arange(11, dtype=torch.float32).unsqueeze(1).repeat(1, 2)  # 11 features, D=2
    out = compress_latent_features(feats, latent_size=3, strategy="average")  # groups of 3, feature 9,10 dropped
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 4.0, 7.0]))
    assert out.shape == (3, 2)
    same = torch.randn(4, 5)
    torch.testing.assert_close(compress_latent_features(same, 4, "average"), same)  # n == K: identity


def test_compress_truncate_and_bad_inputs():
    feats = torch.randn(10, 3)
    torch.testing.assert_close(compress_latent_features(feats, 4, "truncate"), feats[:4])
    with pytest.raises(ValueError, match="fewer than latent_size"):
        compress_latent_features(feats[:2], 4)
    with pytest.raises(ValueError, match="unknown compress_strategy"):
        compress_latent_features(feats, 4, "median")


@pytest.fixture(scope="module")
def dift_setup(tiny_base):
    processor = AutoProcessor.from_pretrained(tiny_base)
    model = LatentQwen2_5_VL.from_pretrained(tiny_base)
    ids = prepare_base_model_for_dift(model, processor, latent_size=4)
    return model, processor, ids


def _samples():
    frames = moving_square_frames(4, direction="right")
    return [
        dict(visual=frames, question="Where does the square go?\n\nA. Left\nB. Right",
             text_output="<think>From <output_image> to <output_image> it moves.</think><answer>B</answer>",
             helper_images=[frames[0].resize((84, 56)), frames[3].resize((112, 56))]),  # 6 and 8 features
        dict(visual=frames[1], question="What colour?",
             text_output="<think>I picture <output_image>.</think><answer>A</answer>",
             helper_images=[frames[2].resize((56, 56))]),
    ]


def _reference_losses(model, batch, latent_size, ce_w, sim_w):
    """The spec's formulas, computed the long way: loops, upstream forward, no code of ours."""
    ids = batch["input_ids"]
    embeds = model.get_input_embeddings()(ids).detach().clone()
    targets = []
    with torch.no_grad():
        for i, grid in enumerate(batch["image_grid_thw_latent"]):
            start = int(batch["image_grid_thw_latent"][:i].prod(dim=1).sum())
            n_patches = int(grid.prod())
            feats = model.model.get_image_features(batch["pixel_values_latent"][start:start + n_patches],
                                                   grid[None]).pooler_output[0]
            group = feats.shape[0] // latent_size
            targets += [feats[k * group:(k + 1) * group].mean(dim=0) for k in range(latent_size)]
    slots = [(b, t) for b in range(ids.shape[0]) for t in range(ids.shape[1]) if ids[b, t] == model.config.latent_token_id]
    assert len(slots) == len(targets)
    for (b, t), vec in zip(slots, targets):
        embeds[b, t] = vec
    vision = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                                    "second_per_grid_ts", "mm_token_type_ids", "attention_mask")}
    with torch.no_grad():
        logits = Qwen2_5_VLForConditionalGeneration.forward(model, input_ids=ids, inputs_embeds=embeds, **vision).logits
        hidden = model.model(input_ids=ids, inputs_embeds=embeds, **vision).last_hidden_state
    labels = batch["labels"]
    nll = [-torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]]
           for b in range(ids.shape[0]) for t in range(1, ids.shape[1]) if labels[b, t] != -100]
    ce = torch.stack(nll).mean()
    mask = batch["image_out_mask"]
    cos = [F.cosine_similarity(hidden[b, t - 1].double(), embeds[b, t].double(), dim=0)
           for b in range(ids.shape[0]) for t in range(ids.shape[1]) if mask[b, t]]
    per_image = [torch.stack([1 - c for c in cos[i:i + latent_size]]).mean() for i in range(0, len(cos), latent_size)]
    sim = torch.stack(per_image).mean()
    return ce_w * ce + sim_w * sim, ce, sim


def test_losses_match_the_spec_formula(dift_setup):
    model, processor, ids = dift_setup
    model.config.ce_loss_weight, model.config.sim_loss_weight = 0.3, 0.7
    batch = DIFTCollator(processor, 4, ids)(_samples())
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    total, ce, sim = _reference_losses(model, batch, 4, 0.3, 0.7)
    assert out.num_output_images == 3
    torch.testing.assert_close(out.ce_loss.double(), ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sim_loss.double(), sim, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss.double(), total, rtol=1e-5, atol=1e-5)
    assert 0 < sim < 2


def test_no_helper_images_is_weighted_ce_only(dift_setup):
    model, processor, ids = dift_setup
    sample = dict(visual=moving_square_frames(2), question="Q?", text_output="<think>x</think><answer>A</answer>",
                  helper_images=[])
    batch = DIFTCollator(processor, 4, ids)([sample])
    with torch.no_grad():
        out = model(**batch)
    assert out.num_output_images == 0 and out.sim_loss.item() == 0.0
    torch.testing.assert_close(out.loss, model.config.ce_loss_weight * out.ce_loss)


def test_nan_guard_returns_zero_loss_attached_to_every_parameter(dift_setup):
    model, processor, ids = dift_setup
    batch = DIFTCollator(processor, 4, ids)(_samples()[:1])
    batch["labels"][:] = -100  # no supervised token: CE is NaN
    model.train()
    model.zero_grad()
    out = model(**batch)
    assert out.skipped and out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    params = model.trainable_parameters()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in params)
    model.zero_grad()


def test_helper_image_count_mismatch_is_a_clear_error(dift_setup):
    model, processor, ids = dift_setup
    batch = DIFTCollator(processor, 4, ids)(_samples())
    batch["pixel_values_latent"] = batch["pixel_values_latent"][:4 * 6]
    batch["image_grid_thw_latent"] = batch["image_grid_thw_latent"][:1]
    with pytest.raises(ValueError, match=r"1 helper images but 3 latent blocks"):
        model(**batch)
    sample = _samples()[1]
    sample["helper_images"] = sample["helper_images"] * 2
    with pytest.raises(ValueError, match=r"1 <output_image> but 2 helper images"):
        DIFTCollator(processor, 4, ids)([sample])


def test_save_load_round_trip_keeps_config_and_logits(dift_setup, tmp_path):
    model, processor, _ = dift_setup
    model.config.latent_size = 3
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["latent_size"] == 3 and saved["latent_token_id"] == 151_665
    loaded = load_latent_model(tmp_path)
    assert loaded.latent.latent_size == 3 and loaded.latent.ce_loss_weight == model.config.ce_loss_weight
    assert (loaded.token_ids.pad, loaded.token_ids.start, loaded.token_ids.end) == (151_665, 151_666, 151_667)
    x = torch.tensor([[151_644, 872, 198, 151_666, 151_665, 151_667, 9707]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=x).logits, model(input_ids=x).logits)
    model.config.latent_size = 4


def test_original_layout_checkpoint_loads_with_same_logits(tmp_path):
    ours = write_checkpoint(tmp_path / "ours", seed=3, latent=True)
    original = write_checkpoint(tmp_path / "original", seed=3, layout="original")
    cfg = json.loads((original / "config.json").read_text())
    assert "text_config" not in cfg and cfg["vocab_size"] == 151_668 and cfg["latent_size"] == 4
    assert not (original / "preprocessor_config.json").exists()
    from safetensors import safe_open

    with safe_open(original / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "visual.merger.mlp.0.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys
    a, b = load_latent_model(ours), load_latent_model(original)
    assert b.latent == a.latent and b.token_ids == a.token_ids
    assert b.processor.image_processor.size.longest_edge == 12_845_056
    frames = moving_square_frames(4)
    from dift.core.conversation import render_generation_prompt
    from dift.core.inputs import encode_batch

    batch = encode_batch(a.processor, [render_generation_prompt(a.processor, frames, "Q?")], [frames])
    with torch.no_grad():
        la, lb = a.model(**batch).logits, b.model(**batch).logits
    assert lb.shape[-1] == 151_668  # the original's shrunk head
    torch.testing.assert_close(lb, la[..., :151_668])


def test_checkpoint_without_latent_fields_or_tokens_is_rejected(tiny_base, tmp_path):
    with pytest.raises(LatentCheckpointError, match="latent tokens .* are missing"):
        load_latent_model(tiny_base)
    ckpt = write_checkpoint(tmp_path / "c", latent=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["latent_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LatentCheckpointError, match=r"config has no latent field\(s\) latent_size") as err:
        load_latent_model(ckpt)
    assert "\n" not in str(err.value)
    assert load_latent_model(ckpt, latent_size=2).latent.latent_size == 2  # --latent_size override
