import pytest
import torch
from transformers import AutoTokenizer

from dift.core.checkpoint import prepare_base_model_for_dift
from dift.core.model import LatentQwen2_5_VL
from dift.core.tokens import (
    LATENT_TOKENS,
    QWEN2_5_VL_SPECIAL_TOKENS,
    LatentCheckpointError,
    LatentTokenIds,
    add_latent_tokens,
)
from scripts.build_tiny_model import build_config, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


def test_real_vocabulary_and_special_token_ids(tokenizer):
    assert len(tokenizer) == 151_665
    for i, token in enumerate(QWEN2_5_VL_SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == 151_643 + i, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # The real Qwen2 byte-level BPE: known encodings.
    assert tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False) == [151644, 77091, 198]
    assert tokenizer.decode(tokenizer.encode("你好, 世界! 🙂\n\tdef f(x):")) == "你好, 世界! 🙂\n\tdef f(x):"


def test_latent_tokens_get_the_real_ids(tokenizer):
    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    ids = add_latent_tokens(tok)
    assert (ids.pad, ids.start, ids.end) == (151_665, 151_666, 151_667)
    assert [tok.convert_tokens_to_ids(t) for t in LATENT_TOKENS] == [151_665, 151_666, 151_667]
    text = "a<|latent_start|><|latent_pad|><|latent_pad|><|latent_end|>b"
    assert tok.encode(text, add_special_tokens=False)[1:5] == [151_666, 151_665, 151_665, 151_667]
    assert add_latent_tokens(tok) == ids  # idempotent
    assert len(tok) == 151_668


def test_missing_latent_tokens_is_a_one_line_error(tokenizer):
    with pytest.raises(LatentCheckpointError, match=r"latent tokens <\|latent_pad\|>.* are missing") as err:
        LatentTokenIds.from_tokenizer(tokenizer, source="ckpt")
    assert "\n" not in str(err.value)


def _model(tie: bool, rows: int | None = None):
    tok = build_tokenizer()
    config = build_config("tiny", tok)
    config.tie_word_embeddings = tie
    torch.manual_seed(0)
    model = LatentQwen2_5_VL(config)
    if rows is not None:
        model.resize_token_embeddings(rows, mean_resizing=False)
    return tok, model


@pytest.mark.parametrize("tie", [True, False])
def test_no_shrink_and_mean_init_of_exactly_the_new_rows(tie):
    tok, model = _model(tie)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    assert before_in.shape[0] == 151_936
    ids = add_latent_tokens(tok, model)
    new = list(ids.latent)
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == 151_936  # never shrunk to len(tokenizer)
    mean = before_in[:151_665].mean(dim=0)
    for i in new:
        torch.testing.assert_close(emb[i], mean)
    untouched = torch.ones(emb.shape[0], dtype=torch.bool)
    untouched[new] = False
    assert torch.equal(emb[untouched], before_in[untouched])  # only the new rows changed
    head = model.get_output_embeddings().weight.detach()
    if not tie:
        for i in new:
            torch.testing.assert_close(head[i], before_out[:151_665].mean(dim=0))
        assert torch.equal(head[untouched], before_out[untouched])
    assert (model.config.latent_token_id, model.config.latent_start_id, model.config.latent_end_id) == tuple(new)


def test_grows_a_too_small_embedding_to_exactly_what_is_needed():
    tok, model = _model(True, rows=151_665)
    add_latent_tokens(tok, model)
    assert model.get_input_embeddings().weight.shape[0] == 151_668


def test_prepare_base_model_freezes_vision_tower(tiny_base):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_base)
    model = LatentQwen2_5_VL.from_pretrained(tiny_base)
    prepare_base_model_for_dift(model, processor, latent_size=2)
    assert model.config.latent_size == 2 and model.config.compress_strategy == "average"
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    model.train()
    assert model.training and not model.model.visual.training  # the tower stays in eval mode
