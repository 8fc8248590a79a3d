"""Resumable training checkpoints (dift.core.training_checkpoint): the completion marker, the
choice of checkpoint to resume from, rotation, and the weight load that resume relies on."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from dift.core.model import LatentQwen2_5_VL
from dift.core.tokens import LatentCheckpointError
from dift.core.training_checkpoint import (
    COMPLETE_MARKER,
    is_complete_checkpoint,
    load_checkpoint_weights,
    mark_complete,
    newest_complete_checkpoint,
    remove_checkpoint,
    rotate_checkpoints,
    step_checkpoints,
)


def make_checkpoints(root, complete, incomplete):
    for step in (*complete, *incomplete):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
    for step in complete:
        mark_complete(root / f"checkpoint-{step}", step)
    (root / "checkpoint-last").mkdir()  # not a step folder
    return root


def names(paths):
    return [p.name for p in paths]


def test_resume_takes_the_newest_complete_checkpoint_and_names_the_skipped_ones(tmp_path):
    root = make_checkpoints(tmp_path, complete=[2, 10], incomplete=[4, 12, 14])
    assert names(step_checkpoints(root)) == ["checkpoint-2", "checkpoint-4", "checkpoint-10", "checkpoint-12",
                                             "checkpoint-14"]  # by step, not by name
    newest, skipped = newest_complete_checkpoint(root)
    assert newest.name == "checkpoint-10" and names(skipped) == ["checkpoint-12", "checkpoint-14"]
    assert newest_complete_checkpoint(tmp_path / "absent") == (None, [])
    assert newest_complete_checkpoint(make_checkpoints(tmp_path / "none", [], [2])) == (None, [tmp_path / "none" /
                                                                                            "checkpoint-2"])
    assert not list(root.glob(f"*/.{COMPLETE_MARKER}.tmp"))  # the marker's temporary name is gone


def test_rotation_keeps_the_newest_complete_ones_and_clears_torn_leftovers(tmp_path):
    root = make_checkpoints(tmp_path, complete=[2, 4, 6, 8], incomplete=[5, 10])
    deleted = rotate_checkpoints(root, keep=2, newest=root / "checkpoint-8")
    assert sorted(names(deleted)) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    assert names(step_checkpoints(root)) == ["checkpoint-6", "checkpoint-8", "checkpoint-10"]  # 10: newer, kept
    assert rotate_checkpoints(root, keep=None, newest=root / "checkpoint-8") == []
    assert names(rotate_checkpoints(root, keep=1, newest=root / "checkpoint-8")) == ["checkpoint-6"]
    remove_checkpoint(root / "checkpoint-8")
    assert not (root / "checkpoint-8").exists() and not is_complete_checkpoint(root / "checkpoint-8")


def test_weights_load_under_the_live_model_names_and_a_mismatch_is_an_error(tiny_latent, tmp_path):
    saved = load_file(tiny_latent / "model.safetensors")
    assert "model.layers.0.mlp.up_proj.weight" in saved and "visual.patch_embed.proj.weight" in saved
    model = LatentQwen2_5_VL.from_pretrained(tiny_latent, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert load_checkpoint_weights(model, tiny_latent) == len(saved)
    live = model.state_dict()
    assert torch.equal(live["model.language_model.layers.0.mlp.up_proj.weight"],
                       saved["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(live["model.visual.patch_embed.proj.weight"], saved["visual.patch_embed.proj.weight"])
    assert torch.equal(live["lm_head.weight"], saved["model.embed_tokens.weight"])  # tied: found through its twin

    broken = tmp_path / "checkpoint-3"
    broken.mkdir()
    del saved["model.norm.weight"]
    saved["extra.weight"] = torch.zeros(2)
    save_file(saved, broken / "model.safetensors")
    with pytest.raises(LatentCheckpointError, match=r"checkpoint-3: weights do not fit the model: 1 missing "
                                                    r"\(e.g. model.language_model.norm.weight\), 1 unexpected"):
        load_checkpoint_weights(model, broken)
    with pytest.raises(LatentCheckpointError, match="no model.safetensors"):
        load_checkpoint_weights(model, tmp_path)
