"""M-RoPE positions by the original's rule (dift.core.positions) and their use in every forward.

The expected positions are computed here by the per-token loop the spec describes
(spec model_and_dift.md section 9), independently of the vectorised implementation: text tokens
count up by one on all three axes; a vision block starting at cursor s gives token (i, r, c) the
position (s + int(i * interval), s + r, s + c); the text after a block starts at the block's
largest position + 1.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLModel

from dift.core.checkpoint import load_latent_model
from dift.core.conversation import render_generation_prompt
from dift.core.generation import SamplingConfig, generate_with_latents, prompt_positions
from dift.core.inputs import encode_batch
from dift.core.positions import mrope_position_ids
from dift.core.replay import replay_results
from scripts.synthetic_media import moving_square_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TPS, MERGE = 2, 2  # tokens_per_second and spatial merge of Qwen2.5-VL
TEXT_ID, IMAGE_ID, VIDEO_ID, PAD_ID = 100, 151655, 151656, 151643
LONG_VIDEO = (25, 24, 40)  # 50 frames of 336x560: 25 x 12 x 20 = 6,000 tokens
IMAGE = (1, 8, 10)


def rule_positions(segments) -> list[tuple[int, int, int]]:
    """The spec's rule, token by token. segments: ("text", n) | ("image", grid) | ("video", grid, s/grid)."""
    out, cursor = [], 0
    for seg in segments:
        if seg[0] == "text":
            for _ in range(seg[1]):
                out.append((cursor, cursor, cursor))
                cursor += 1
            continue
        t, h, w = seg[1]
        interval = TPS * seg[2] if seg[0] == "video" else 1
        largest = cursor
        for i in range(t):
            for r in range(h // MERGE):
                for c in range(w // MERGE):
                    p = (cursor + int(i * interval), cursor + r, cursor + c)
                    out.append(p)
                    largest = max(largest, *p)
        cursor = largest + 1
    return out


def row_tokens(segments) -> tuple[list[int], list[int]]:
    ids, kinds = [], []
    for seg in segments:
        if seg[0] == "text":
            ids += [TEXT_ID] * seg[1]
            kinds += [0] * seg[1]
        else:
            t, h, w = seg[1]
            n = t * (h // MERGE) * (w // MERGE)
            ids += [IMAGE_ID if seg[0] == "image" else VIDEO_ID] * n
            kinds += [1 if seg[0] == "image" else 2] * n
    return ids, kinds


def make_batch(rows, padding_side="left"):
    """A padded batch of rows of segments, with the grids in batch order, and the expected positions."""
    encoded = [row_tokens(r) for r in rows]
    length = max(len(ids) for ids, _ in encoded)
    batch = len(rows)
    input_ids = torch.full((batch, length), PAD_ID)
    kinds = torch.zeros((batch, length), dtype=torch.int32)
    mask = torch.zeros((batch, length), dtype=torch.long)
    expected = torch.zeros((3, batch, length), dtype=torch.long)
    images, videos, seconds = [], [], []
    for b, (row, (ids, kind)) in enumerate(zip(rows, encoded)):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[b, span] = torch.tensor(ids)
        kinds[b, span] = torch.tensor(kind, dtype=torch.int32)
        mask[b, span] = 1
        expected[:, b, span] = torch.tensor(rule_positions(row)).T
        for seg in row:
            if seg[0] == "image":
                images.append(seg[1])
            elif seg[0] == "video":
                videos.append(seg[1])
                seconds.append(seg[2])
    return dict(input_ids=input_ids, mm_token_type_ids=kinds, attention_mask=mask,
                image_grid_thw=torch.tensor(images) if images else None,
                video_grid_thw=torch.tensor(videos) if videos else None,
                second_per_grid_ts=torch.tensor(seconds) if seconds else None), expected


def ours(batch):
    return mrope_position_ids(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                              batch["video_grid_thw"], batch["second_per_grid_ts"], batch["attention_mask"],
                              spatial_merge_size=MERGE, tokens_per_second=TPS)


MIXED_ROWS = [
    [("text", 4), ("video", LONG_VIDEO, 2.0), ("text", 3), ("image", IMAGE), ("text", 5)],
    [("text", 6), ("image", IMAGE), ("text", 2), ("video", LONG_VIDEO, 1.0), ("text", 4)],
    [("text", 7)],
    [("text", 4), ("video", (2, 16, 16), 2.0), ("text", 9)],
]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_positions_equal_the_rule_token_by_token(padding_side):
    batch, expected = make_batch(MIXED_ROWS, padding_side)
    positions, next_position = ours(batch)
    assert torch.equal(positions, expected)
    real = batch["attention_mask"].bool()
    assert next_position.tolist() == [int(expected[:, b][:, real[b]].max()) + 1 for b in range(len(MIXED_ROWS))]


def test_text_after_a_long_video_starts_after_its_time_extent():
    # The spec's worked numbers: a block starting at 4, grid 25 x 24 x 40: the first text token
    # after it is at 101 at 2.0 s per grid (53 at 1.0 s); transformers 5.24 puts it at 24.
    for seconds, first_text in ((2.0, 101), (1.0, 53)):
        batch, _ = make_batch([[("text", 4), ("video", LONG_VIDEO, seconds), ("text", 2)]])
        positions, next_position = ours(batch)
        after = 4 + 6000
        assert positions[:, 0, after].tolist() == [first_text] * 3
        assert int(next_position[0]) == first_text + 2


def test_inside_blocks_and_where_the_rules_agree_it_equals_upstream(tiny_latent):
    inner = load_latent_model(tiny_latent, dtype=torch.float32).model.model

    def upstream(batch):
        return Qwen2_5_VLModel.get_rope_index(inner, **batch)[0]

    # Images, text and a short video (time extent within max(h', w')): both rules agree everywhere.
    agree, expected = make_batch([MIXED_ROWS[2], MIXED_ROWS[3], [("text", 3), ("image", IMAGE), ("text", 8)]])
    assert torch.equal(upstream(agree), expected)
    assert torch.equal(ours(agree)[0], expected)
    # A long video: the same positions inside the block, upstream's text after it 77 positions early.
    long, _ = make_batch([MIXED_ROWS[0]])
    mine, theirs = ours(long)[0], upstream(long)
    block = slice(4, 4 + 6000)
    assert torch.equal(mine[:, :, block], theirs[:, :, block])
    assert int(mine[0, 0, 6004]) == 101 and int(theirs[0, 0, 6004]) == 24
    # The model's own get_rope_index is ours (upstream generate() goes through it).
    assert torch.equal(inner.get_rope_index(**long)[0], mine)


def test_a_block_that_does_not_fill_its_grid_is_an_error():
    batch, _ = make_batch([[("text", 2), ("image", IMAGE), ("text", 2)]])
    batch["image_grid_thw"] = torch.tensor([[1, 8, 12]])
    with pytest.raises(ValueError, match="vision block 0 has 20 tokens but its grid"):
        ours(batch)
    batch["image_grid_thw"] = None
    with pytest.raises(ValueError, match="1 image blocks but 0 image grids"):
        ours(batch)


# ---------------------------------------------------------------------------------------------
# Every forward uses the rule: on real prompts whose video's time extent exceeds its width


@pytest.fixture(scope="module")
def untied(tiny_latent_untied):
    torch.manual_seed(0)
    return load_latent_model(tiny_latent_untied, dtype=torch.float32)


@pytest.fixture(scope="module")
def long_video_inputs(untied):
    """Two left-padded prompts with 20-frame videos (10 temporal grids x 4 s = 36 > max(h', w'))."""
    items = [(moving_square_frames(20, direction="right"), "Where does the square go?\n\nA. Left\nB. Right"),
             (moving_square_frames(20, 56, 56, direction="up", seed=2), "Up or down?")]
    texts = [render_generation_prompt(untied.processor, v, q) for v, q in items]
    inputs = encode_batch(untied.processor, texts, [v for v, _ in items], padding_side="left")
    grid = inputs["video_grid_thw"]
    assert bool(((grid[:, 0] - 1) * 4 > grid[:, 1:].max(dim=1).values // MERGE).all())  # the rules disagree here
    return inputs


def upstream_positions(model, inputs):
    return Qwen2_5_VLModel.get_rope_index(model.model, inputs["input_ids"], inputs["mm_token_type_ids"],
                                          image_grid_thw=inputs.get("image_grid_thw"),
                                          video_grid_thw=inputs["video_grid_thw"],
                                          second_per_grid_ts=inputs["second_per_grid_ts"],
                                          attention_mask=inputs["attention_mask"])[0]


def test_model_forward_without_positions_uses_the_rule(untied, long_video_inputs):
    model = untied.model
    positions, _ = prompt_positions(model, long_video_inputs)
    with torch.no_grad():
        implicit = model(**long_video_inputs, logits_to_keep=1).last_hidden_state
        explicit = model(**long_video_inputs, position_ids=positions, logits_to_keep=1).last_hidden_state
        theirs = model(**long_video_inputs, position_ids=upstream_positions(model, long_video_inputs),
                       logits_to_keep=1).last_hidden_state
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)
    assert not torch.allclose(implicit, theirs, atol=1e-4)  # the check has teeth
    # The training forward (labels): the same loss as with the rule's positions passed explicitly.
    labels = torch.full_like(long_video_inputs["input_ids"], -100)
    labels[:, -12:] = long_video_inputs["input_ids"][:, -12:]  # the text after the video
    with torch.no_grad():
        loss = model(**long_video_inputs, labels=labels).loss
        loss_explicit = model(**long_video_inputs, labels=labels, position_ids=positions).loss
    assert float(loss) == float(loss_explicit)


def test_generation_continues_from_the_rule_and_matches_full_forwards(untied, long_video_inputs):
    model, t = untied.model, untied.token_ids
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True)
    force_block = {0: {3: t.start}, 1: {5: t.start}}

    def steer(step, rows, scores):
        scores = scores.clone()
        for i, r in enumerate(rows.tolist()):
            if force_block[r].get(step) is not None:
                scores[i, force_block[r][step]] += 1e4
        return scores

    try:
        results = generate_with_latents(model, long_video_inputs, t, 4, SamplingConfig(max_new_tokens=14, do_sample=False),
                                        logits_processor=steer)
    finally:
        hook.remove()
    rule, _ = ours({k: long_video_inputs.get(k) for k in ("input_ids", "mm_token_type_ids", "image_grid_thw",
                                                           "video_grid_thw", "second_per_grid_ts", "attention_mask")})
    real = long_video_inputs["attention_mask"].bool()
    first_generated = [int(rule[:, b][:, real[b]].max()) + 1 for b in range(2)]
    assert seen[1][0, :, 0].tolist() == first_generated  # seen[0] is the prefill
    assert first_generated[0] > int(upstream_positions(model, long_video_inputs)[:, 0].max()) + 1

    # Cached greedy == a full forward (no cache, the model's own positions) over prompt + tokens so far.
    for b, result in enumerate(results):
        prompt = long_video_inputs["input_ids"][b][real[b]]
        assert len({*result.token_ids}) > 3  # the untied head's outputs vary
        vision = {k: long_video_inputs[k][b:b + 1] for k in ("video_grid_thw", "second_per_grid_ts")}
        pixels = long_video_inputs["pixel_values_videos"]
        per_video = long_video_inputs["video_grid_thw"].prod(dim=1).tolist()
        vision["pixel_values_videos"] = pixels[sum(per_video[:b]):sum(per_video[:b + 1])]
        pads_done = 0
        for step in range(len(result.token_ids)):
            ids = torch.cat([prompt, torch.tensor(result.token_ids[:step], dtype=torch.long)])[None]
            n_pads = int((ids == t.pad).sum())
            if ids[0, -1] == t.pad or result.token_ids[step] in (t.pad, t.end) or step in force_block[b]:
                pads_done = n_pads
                continue  # forced or steered tokens: not the model's argmax
            with torch.no_grad():
                out = model(input_ids=ids, latent_hidden_states=result.latent_vectors[:n_pads] if n_pads else None,
                            **vision)
            assert int(out.logits[0, -1].argmax()) == result.token_ids[step], (b, step)
        assert pads_done == 4


def test_replay_equals_sampling_logprobs_on_long_video_prompts(untied, long_video_inputs):
    t = untied.token_ids
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.7, top_p=0.9)

    def steer(step, rows, scores):
        scores = scores.clone()
        if step == 2:
            scores[:, t.start] += 1e4
        return scores

    results = generate_with_latents(untied.model, long_video_inputs, t, 4, sampling, seeds=[1, 2], logits_processor=steer)
    assert all(r.latent_vectors.shape[0] == 4 for r in results)
    with torch.no_grad():
        replay = replay_results(untied.model, long_video_inputs, results, temperature=sampling.temperature)
    for b, result in enumerate(results):
        torch.testing.assert_close(replay.logprobs[b, :len(result.token_ids)], result.logprobs, rtol=1e-4, atol=1e-4)
