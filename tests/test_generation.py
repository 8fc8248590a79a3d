"""Latent-aware batched generation and latent replay (dift.core.generation, dift.core.replay).

A random tiny model rarely samples `<|latent_start|>` on its own, so the tests steer it with the
loop's `logits_processor` hook (it changes what the sampler sees, never the reported log-probs):
a row gets a huge bias on `<|latent_start|>` or `<|im_end|>` at chosen steps.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from dift.core.checkpoint import load_latent_model
from dift.core.conversation import render_generation_prompt
from dift.core.generation import (
    GenerationResult,
    Question,
    SamplingConfig,
    answer_questions,
    apply_repetition_penalty,
    decode_answer_text,
    generate_with_latents,
)
from dift.core.inputs import encode_batch
from dift.core.replay import replay_logprobs, replay_results
from scripts.synthetic_media import moving_square_frames

K = 4  # the tiny checkpoint's latent_size


# See conftest.one_torch_thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded(tiny_latent):
    torch.manual_seed(0)
    return load_latent_model(tiny_latent, dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(loaded):
    """Three prompts of different lengths: a 4-frame video, one image, a 2-frame video."""
    frames = moving_square_frames(4, direction="right")
    items = [(frames, "Where does the red square move?\n\nA. Left\nB. Right\nC. Up\nD. Down"),
             (frames[1].resize((140, 112)), "What colour is the square? Answer in one word, please."),
             (moving_square_frames(2, direction="up", seed=3), "Up or down?")]
    texts = [render_generation_prompt(loaded.processor, v, q) for v, q in items]
    return texts, [v for v, _ in items]


def encode(loaded, prompts, rows=None):
    texts, visuals = prompts
    rows = range(len(texts)) if rows is None else rows
    return encode_batch(loaded.processor, [texts[r] for r in rows], [visuals[r] for r in rows], padding_side="left")


def steer(plan: dict[int, dict[int, int]], row_map=None):
    """A logits_processor: plan[row][step] = token id to force (a +1e4 bias) for that row at that step.
    row_map maps the batch's row indices to plan rows (a row generated alone is batch row 0)."""
    def processor(step, rows, scores):
        scores = scores.clone()
        for i, r in enumerate(rows.tolist()):
            token = plan.get(row_map[r] if row_map else r, {}).get(step)
            if token is not None:
                scores[i, token] += 1e4
        return scores
    return processor


def generate(loaded, inputs, sampling, plan=None, row_map=None, **kwargs) -> list[GenerationResult]:
    return generate_with_latents(loaded.model, inputs, loaded.token_ids, K, sampling,
                                 logits_processor=steer(plan, row_map) if plan else None, **kwargs)


def latent_blocks(ids: list[int], t) -> list[tuple[int, int]]:
    """(start index, pad count) of every latent block; asserts the block rule on the way: each block
    is start, exactly K pads, end (only the last may be cut by max_new_tokens); no pad or end outside."""
    blocks, i = [], 0
    while i < len(ids):
        if ids[i] == t.start:
            j = i + 1
            while j < len(ids) and ids[j] == t.pad:
                j += 1
            pads = j - i - 1
            if j < len(ids):
                assert pads == K and ids[j] == t.end, (i, ids[i:j + 1])
            else:
                assert pads <= K  # cut by max_new_tokens
            blocks.append((i, pads))
            i = j + 1
        else:
            assert ids[i] not in (t.pad, t.end), f"{ids[i]} outside a latent block at {i}"
            i += 1
    return blocks


# Row 0 imagines at step 2; row 1 at step 5 and ends (<|im_end|>) at step 14; row 2 at 3 and again at 12.
def block_plan(t):
    return {0: {2: t.start}, 1: {5: t.start, 14: t.im_end}, 2: {3: t.start, 12: t.start}}


def assert_same(batched: GenerationResult, alone: GenerationResult):
    assert batched.token_ids == alone.token_ids
    assert batched.finished == alone.finished
    torch.testing.assert_close(batched.latent_vectors, alone.latent_vectors, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.logprobs, alone.logprobs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=18, do_sample=False),
                                      SamplingConfig(max_new_tokens=18, temperature=0.7, top_p=0.9, top_k=50)],
                         ids=["greedy", "sampled"])
def test_batched_equals_each_row_alone(loaded, prompts, sampling):
    t = loaded.token_ids
    plan, seeds = block_plan(t), [11, 12, 13]
    batched = generate(loaded, encode(loaded, prompts), sampling, plan, seeds=seeds)
    assert [len(latent_blocks(r.token_ids, t)) for r in batched] == [1, 1, 2]
    assert batched[1].finished and len(batched[1].token_ids) == 15 and batched[1].token_ids[-1] == t.im_end
    assert not batched[0].finished and len(batched[0].token_ids) == 18
    for r in range(3):
        alone = generate(loaded, encode(loaded, prompts, [r]), sampling, plan, row_map={0: r}, seeds=[seeds[r]])[0]
        assert_same(batched[r], alone)


def test_rows_enter_and_leave_blocks_independently(loaded, prompts):
    t = loaded.token_ids
    # Row 2 is pushed to <|latent_start|> at EVERY step: inside a block that sample is discarded, so it
    # imagines block after block, each exactly start + K pads + end. Row 0 is pushed to <|im_end|>
    # while inside its block: discarded too, it must not finish there.
    plan = {0: {1: t.start, 3: t.im_end}, 1: {4: t.start}, 2: {s: t.start for s in range(20)}}
    results = generate(loaded, encode(loaded, prompts), SamplingConfig(max_new_tokens=20, do_sample=False), plan)
    blocks = [latent_blocks(r.token_ids, t) for r in results]
    assert blocks[0] == [(1, K)] and blocks[1] == [(4, K)]
    assert blocks[2] == [(0, K), (6, K), (12, K), (18, 1)]  # the last one cut by max_new_tokens
    assert not results[0].finished and t.im_end not in results[0].token_ids
    # In the same step, row 0 is inside its block while row 1 decodes normally, and vice versa.
    assert results[0].token_ids[3] == t.pad and results[1].token_ids[3] not in t.latent
    assert results[1].token_ids[7] == t.pad and results[0].token_ids[7] not in t.latent
    for r in results:  # one fed vector per emitted pad
        assert r.latent_vectors.shape == (r.token_ids.count(t.pad), loaded.model.config.text_config.hidden_size)


def test_fed_vector_is_the_hidden_state_of_the_position_before(loaded, prompts):
    """Checked against an independent full forward (upstream model, no cache) over prompt +
    generated ids, with the recorded vectors written into the input embeddings by hand."""
    t = loaded.token_ids
    inputs = encode(loaded, prompts, [0])
    [result] = generate(loaded, inputs, SamplingConfig(max_new_tokens=12, do_sample=False), {0: {2: t.start, 8: t.start}})
    assert result.latent_vectors.shape[0] == K + 3  # a full block, then 3 pads of a block cut at step 11
    model = loaded.model
    prompt_ids = inputs["input_ids"]
    ids = torch.cat([prompt_ids, torch.tensor([result.token_ids])], dim=1)
    positions, _ = model.model.get_rope_index(prompt_ids, inputs["mm_token_type_ids"],
                                              video_grid_thw=inputs["video_grid_thw"],
                                              second_per_grid_ts=inputs["second_per_grid_ts"])
    n = len(result.token_ids)
    new = positions.max() + 1 + torch.arange(n)
    positions = torch.cat([positions, new.view(1, 1, -1).expand(3, 1, -1)], dim=2)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids).clone()
        slots = (ids[0] == t.pad).nonzero()[:, 0].tolist()
        for k, p in enumerate(slots):
            embeds[0, p] = result.latent_vectors[k]
        hidden = model.model(input_ids=ids, inputs_embeds=embeds, position_ids=positions,
                             pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                             mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, n), dtype=torch.int)], 1)
                             ).last_hidden_state[0]
    for k, p in enumerate(slots):
        torch.testing.assert_close(result.latent_vectors[k], hidden[p - 1], rtol=1e-4, atol=1e-4)
    assert ids[0, slots[0] - 1] == t.start  # the first pad is fed the <|latent_start|> position's state


def test_replay_reproduces_sampling_logprobs(loaded, prompts):
    t = loaded.token_ids
    sampling = SamplingConfig(max_new_tokens=16, temperature=0.8, top_p=0.95, top_k=100)
    inputs = encode(loaded, prompts)
    results = generate(loaded, inputs, sampling, block_plan(t), seeds=[1, 2, 3])
    model = loaded.model
    out = replay_results(model, inputs, results, temperature=sampling.temperature)
    for i, r in enumerate(results):
        n = len(r.token_ids)
        assert out.mask[i].sum() == n
        torch.testing.assert_close(out.logprobs[i, :n], r.logprobs, rtol=1e-4, atol=1e-4)
    # The static <|latent_pad|> embedding in the slots (what the original's RL forward did) does not.
    static = model.get_input_embeddings().weight[t.pad].detach()
    naive = replay_logprobs(model, inputs, [r.token_ids for r in results],
                            [static.expand(r.latent_vectors.shape[0], -1) for r in results],
                            temperature=sampling.temperature)
    # (The random model's distributions are nearly flat, so the gap is small in absolute terms: still
    # well over ten times the replay tolerance, after every row's first block.)
    gaps = [(naive.logprobs[i, r.token_ids.index(t.end):len(r.token_ids)]
             - r.logprobs[r.token_ids.index(t.end):]).abs().max() for i, r in enumerate(results)]
    assert max(gaps) > 1e-3
    # Differentiable: RL backpropagates through it.
    model.zero_grad()
    out.logprobs[out.mask].sum().backward()
    assert model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_replay_accepts_a_padded_tensor_and_checks_counts(loaded, prompts):
    t = loaded.token_ids
    inputs = encode(loaded, prompts, [1, 2])
    results = generate(loaded, inputs, SamplingConfig(max_new_tokens=10, do_sample=False),
                       {0: {1: t.start, 7: t.im_end}})
    ids = torch.full((2, 10), 0)
    mask = torch.zeros((2, 10), dtype=torch.bool)
    for i, r in enumerate(results):
        ids[i, :len(r.token_ids)] = torch.tensor(r.token_ids)
        mask[i, :len(r.token_ids)] = True
    with torch.no_grad():
        out = replay_logprobs(loaded.model, inputs, ids, [r.latent_vectors for r in results], completion_mask=mask,
                              with_entropy=True)
    torch.testing.assert_close(out.logprobs[0, :8], results[0].logprobs, rtol=1e-4, atol=1e-4)
    assert (out.logprobs[0, 8:] == 0).all() and (out.entropy[0, :8] > 0).all()
    with pytest.raises(ValueError, match=r"row 0: 0 latent vectors for 4 <\|latent_pad\|> tokens"):
        replay_logprobs(loaded.model, inputs, ids, [results[0].latent_vectors[:0], results[1].latent_vectors],
                        completion_mask=mask)


def test_latent_ablation_zero_and_noise(loaded, prompts):
    t = loaded.token_ids
    inputs, plan = encode(loaded, prompts, [0, 2]), {0: {2: t.start}, 1: {4: t.start}}
    greedy = SamplingConfig(max_new_tokens=12, do_sample=False)
    base = generate(loaded, inputs, greedy, plan, seeds=[5, 6])
    zero = generate(loaded, inputs, greedy, plan, seeds=[5, 6], latent_ablation="zero")
    noise = generate(loaded, inputs, greedy, plan, seeds=[5, 6], latent_ablation="noise")
    for b, z, n in zip(base, zero, noise):
        assert b.latent_vectors.shape == z.latent_vectors.shape == n.latent_vectors.shape == (K, 64)
        assert b.latent_vectors.abs().sum() > 0 and (z.latent_vectors == 0).all()
        # Up to the first pad all three runs are identical, so the first noise vector replaces exactly
        # the first hidden state of the unablated run: same norm, different direction.
        torch.testing.assert_close(n.latent_vectors[0].norm(), b.latent_vectors[0].norm())
        assert torch.nn.functional.cosine_similarity(n.latent_vectors[0], b.latent_vectors[0], dim=0) < 0.9
    with pytest.raises(ValueError, match="latent_ablation"):
        generate(loaded, inputs, greedy, latent_ablation="shuffle")


def test_nothing_is_inherited_from_generation_config(loaded, prompts, tiny_latent):
    """The checkpoint's generation_config.json is Qwen2.5-VL's (temperature 0.1, top-k 1, repetition
    penalty 1.05): near-greedy. Our sampling must use exactly the SamplingConfig it is given."""
    saved = GenerationConfig.from_pretrained(tiny_latent)
    assert (saved.temperature, saved.top_k, saved.repetition_penalty) == (0.1, 1, 1.05)
    model, t = loaded.model, loaded.token_ids
    inputs = encode(loaded, prompts, [0, 0, 0])
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1.0, top_k=0)
    results = generate(loaded, inputs, sampling, seeds=[1, 2, 3])
    # top-k 1 / temperature 0.1 would make all three rows identical: near-uniform random logits differ.
    assert len({tuple(r.token_ids) for r in results}) == 3
    # Greedy with repetition_penalty 1.0 equals the plain argmax chain of an uncached full forward
    # (the prompt contains 'assistant', which this random model likes to repeat: a 1.05 penalty would bite).
    [greedy] = generate(loaded, encode(loaded, prompts, [0]), SamplingConfig(max_new_tokens=5, do_sample=False))
    ids = encode(loaded, prompts, [0])
    seq = ids["input_ids"]
    vision = {k: ids[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    positions, _ = model.model.get_rope_index(seq, ids["mm_token_type_ids"], video_grid_thw=ids["video_grid_thw"],
                                              second_per_grid_ts=ids["second_per_grid_ts"])
    chain, logprobs = [], []
    for _ in range(5):
        with torch.no_grad():
            logits = model(input_ids=seq, position_ids=positions, use_cache=False, **vision).logits[0, -1]
        token = int(logits.argmax())
        chain.append(token)
        logprobs.append(torch.log_softmax(logits, -1)[token])
        seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
        positions = torch.cat([positions, positions[:, :, -1:].amax(0, keepdim=True).expand(3, 1, 1) + 1], dim=2)
    assert t.start not in chain  # (no block here: the chain above embeds every token)
    assert greedy.token_ids == chain
    torch.testing.assert_close(greedy.logprobs, torch.stack(logprobs), rtol=1e-4, atol=1e-4)


def test_greedy_equals_upstream_generate_without_latent_blocks(loaded, prompts):
    """Outside latent blocks our loop is plain cached greedy decoding: the library's own `generate`
    (every field explicit) gives the same tokens on the same left-padded batch."""
    inputs = encode(loaded, prompts, [0, 1])
    ours = generate(loaded, inputs, SamplingConfig(max_new_tokens=10, do_sample=False))
    config = GenerationConfig(max_new_tokens=10, min_new_tokens=10, do_sample=False, repetition_penalty=1.0,
                              eos_token_id=loaded.token_ids.im_end, pad_token_id=loaded.token_ids.text_pad)
    with torch.no_grad():
        upstream = loaded.model.generate(**inputs, generation_config=config)[:, inputs["input_ids"].shape[1]:]
    for row, result in zip(upstream.tolist(), ours):
        assert loaded.token_ids.start not in result.token_ids
        assert result.token_ids == row


def test_repetition_penalty_is_applied_when_asked(loaded, prompts):
    scores = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    torch.testing.assert_close(apply_repetition_penalty(scores, seen, 2.0), torch.tensor([[1.0, -4.0, 1.0]]))
    # A huge penalty: greedy never repeats a token of the prompt or of its own output.
    inputs = encode(loaded, prompts, [1])
    [result] = generate(loaded, inputs, SamplingConfig(max_new_tokens=8, do_sample=False, repetition_penalty=1e4))
    prompt_ids = set(inputs["input_ids"][0].tolist())
    assert len(set(result.token_ids)) == 8 and not prompt_ids & set(result.token_ids)


def test_sampling_config_checks_temperature():
    # (The sampling rules themselves: tests/test_sampling.py.)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)


def test_decode_answer_text(loaded):
    tok = loaded.processor.tokenizer
    t = loaded.token_ids
    ids = tok.encode("<think>I picture ", add_special_tokens=False) + [t.start, t.pad, t.end] + \
        tok.encode(" it.</think><answer> B </answer>", add_special_tokens=False) + [t.im_end]
    assert decode_answer_text(tok, ids) == \
        "<think>I picture <|latent_start|><|latent_pad|><|latent_end|> it.</think><answer> B </answer>"
    again = tok.encode("x<|im_start|>assistant\n B <|im_end|>", add_special_tokens=False)
    assert decode_answer_text(tok, again) == "B"


def test_answer_questions_in_order_and_batch_independent(loaded, prompts):
    texts, visuals = prompts
    questions = [Question(visual=v, question=q, seed=i) for i, (v, q) in enumerate(zip(visuals, [
        "Where does the red square move?\n\nA. Left\nB. Right", "What colour?", "Up or down?"]))]
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=50)
    by_two = list(answer_questions(loaded, questions, sampling, batch_size=2, progress=False))
    by_one = list(answer_questions(loaded, questions, sampling, batch_size=1, progress=False))
    assert [i for i, _ in by_two] == [0, 1, 2]
    for (_, a), (_, b) in zip(by_two, by_one):
        assert a.token_ids == b.token_ids
        assert a.logprobs is None  # evaluation and inference skip the per-step log-softmax
        assert a.text == decode_answer_text(loaded.processor.tokenizer, a.token_ids)


def test_right_padded_batch_is_refused(loaded, prompts):
    texts, visuals = prompts
    inputs = encode_batch(loaded.processor, texts, visuals, padding_side="right")
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate(loaded, inputs, SamplingConfig(max_new_tokens=2))


def test_stop_ids_end_a_row(loaded, prompts):
    """Evaluation stops at <|endoftext|> as well as <|im_end|> (answer_questions); by default only
    <|im_end|> ends a row, and a stop token sampled inside a latent block is discarded."""
    t = loaded.token_ids
    inputs = encode(loaded, prompts, [0, 1])
    plan = {0: {3: t.text_pad}, 1: {1: t.start, 3: t.text_pad, 9: t.text_pad}}
    greedy = SamplingConfig(max_new_tokens=12, do_sample=False)
    default = generate(loaded, inputs, greedy, plan)
    assert not any(r.finished for r in default) and [len(r.token_ids) for r in default] == [12, 12]
    both = generate(loaded, inputs, greedy, plan, stop_ids=(t.im_end, t.text_pad))
    assert both[0].finished and both[0].token_ids[-1] == t.text_pad and len(both[0].token_ids) == 4
    # Row 1 is inside its block at step 3 (the sampled <|endoftext|> is replaced by a pad); it stops at 9.
    assert both[1].token_ids[3] == t.pad and both[1].finished and len(both[1].token_ids) == 10
    assert both[0].token_ids == default[0].token_ids[:4] and both[1].token_ids == default[1].token_ids[:10]


def test_shared_prefix_groups_equal_separate_prefills(loaded, prompts):
    """group_size=G encodes each prompt once and repeats its KV cache to G rows: the same tokens, fed
    vectors and log-probs as a batch holding every prompt G times (G prefills each), seed for seed."""
    t, group = loaded.token_ids, 3
    sampling = SamplingConfig(max_new_tokens=14, temperature=1.0, top_p=0.9)
    seeds = list(range(100, 109))
    # Latent blocks at different steps in different rows, and one row that stops early.
    plan = {0: {1: t.start}, 2: {4: t.start}, 4: {2: t.start, 10: t.im_end}, 7: {0: t.start, 8: t.start}}
    shared = generate(loaded, encode(loaded, prompts), sampling, plan, seeds=seeds, group_size=group)
    separate = generate(loaded, encode(loaded, prompts, [0, 0, 0, 1, 1, 1, 2, 2, 2]), sampling, plan, seeds=seeds)
    assert len(shared) == 9
    for a, b in zip(shared, separate):
        assert_same(a, b)
    assert [r.token_ids.count(t.start) for r in shared] == [1, 0, 1, 0, 1, 0, 0, 2, 0]
    assert shared[4].finished and len(shared[4].token_ids) == 11
    # The copies of one prompt are sampled independently (their own seeds), not copied.
    assert len({tuple(r.token_ids) for r in shared[3:6]}) == 3
    with pytest.raises(ValueError, match="3 seeds for a batch of 9 rows"):
        generate(loaded, encode(loaded, prompts), sampling, seeds=[1, 2, 3], group_size=group)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_memory_bounded_head_equals_log_softmax(loaded, tied):
    """`token_logprobs` (replay's head: no (tokens, vocab) matrix kept) gives log_softmax(lm_logits / T)
    at the targets, the entropy, and the same gradients, for a tied and an untied head."""
    model = loaded.model
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, model.config.text_config.hidden_size, generator=gen)
    targets = torch.randint(0, model.config.text_config.vocab_size, (37,), generator=gen)
    untied = None
    if not tied:  # a separate head with its own weights (what the 7B has)
        untied = torch.nn.Parameter(torch.randn_like(model.lm_head.weight, requires_grad=False) * 0.05)
        model.config.tie_word_embeddings, model.lm_head.weight = False, untied
    try:
        weight = model.lm_head.weight
        h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
        ours, entropy = model.token_logprobs(h1, targets, temperature=0.7, with_entropy=True)
        full = torch.log_softmax(model.lm_logits(h2) / 0.7, dim=-1)
        torch.testing.assert_close(ours, full.gather(-1, targets[:, None])[:, 0], rtol=0, atol=2e-5)
        torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1), rtol=0, atol=2e-4)
        weight.grad = None
        ours.sum().backward()
        ours_grads = (h1.grad, weight.grad.clone())
        weight.grad = None
        full.gather(-1, targets[:, None]).sum().backward()
        torch.testing.assert_close(ours_grads[0], h2.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours_grads[1], weight.grad, rtol=1e-4, atol=1e-6)
    finally:
        weight.grad = None
        if untied is not None:
            model.config.tie_word_embeddings = True
            model.lm_head.weight = model.get_input_embeddings().weight
