"""The CUDA paths (skipped without a GPU): bf16 DIFT step and latent-aware generation + replay on the GPU."""

from __future__ import annotations

import pytest
import torch

from dift.collator import DIFTCollator
from dift.core.checkpoint import load_latent_model
from dift.core.conversation import render_generation_prompt
from dift.core.generation import SamplingConfig, generate_with_latents
from dift.core.inputs import encode_batch
from dift.core.replay import replay_results
from scripts.synthetic_media import moving_square_frames

pytestmark = pytest.mark.gpu


def test_bf16_dift_step_on_cuda(tiny_latent):
    loaded = load_latent_model(tiny_latent, dtype=torch.bfloat16, device="cuda")
    model, processor = loaded.model, loaded.processor
    frames = moving_square_frames(4, direction="right")
    sample = dict(visual=frames, question="Where does the square go?\n\nA. Left\nB. Right",
                  text_output="<think>From <output_image> to <output_image>.</think><answer>B</answer>",
                  helper_images=[frames[0], frames[-1]])
    batch = DIFTCollator(processor, loaded.latent.latent_size, loaded.token_ids)([sample])
    model.train()
    out = model(**{k: v.to("cuda") for k, v in batch.items()})
    out.loss.backward()
    assert not out.skipped and torch.isfinite(out.loss) and out.num_output_images == 2
    grads = [p.grad for p in model.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_generation_and_replay_on_cuda(tiny_latent):
    loaded = load_latent_model(tiny_latent, dtype=torch.float32, device="cuda")
    t = loaded.token_ids
    visuals = [moving_square_frames(4, direction="up"), moving_square_frames(2, direction="left", seed=2)]
    texts = [render_generation_prompt(loaded.processor, v, q) for v, q in zip(visuals, ["Which way?", "Up?"])]
    inputs = encode_batch(loaded.processor, texts, visuals, padding_side="left")

    def open_block_at_step_2(step, rows, scores):
        if step == 2:
            scores = scores.clone()
            scores[:, t.start] += 1e4
        return scores

    sampling = SamplingConfig(max_new_tokens=12, temperature=0.9, top_p=0.95)
    results = generate_with_latents(loaded.model, inputs, t, loaded.latent.latent_size, sampling, seeds=[1, 2],
                                    logits_processor=open_block_at_step_2)
    assert all(r.token_ids[2] == t.start and r.latent_vectors.shape[0] == loaded.latent.latent_size
               for r in results)
    with torch.no_grad():
        replay = replay_results(loaded.model, inputs, results, temperature=sampling.temperature)
    for i, r in enumerate(results):
        torch.testing.assert_close(replay.logprobs[i, :len(r.token_ids)].cpu(), r.logprobs, rtol=1e-3, atol=1e-3)


def test_engine_with_cuda_graphs_equals_eager_and_the_reference(tiny_latent_untied):
    """The engine's step compiled with CUDA graphs ("reduce-overhead") gives the eager engine's and the
    reference loop's tokens, with slots refilled mid-run and latent blocks, and compiles nothing after
    its warm-up (a second run with other prompts included)."""
    from dift.core.engine import Engine

    loaded = load_latent_model(tiny_latent_untied, dtype=torch.float32, device="cuda")
    t = loaded.token_ids
    visuals = [moving_square_frames(4, direction="up"), moving_square_frames(2, direction="left", seed=2),
               moving_square_frames(3, direction="right", seed=3)]
    texts = [render_generation_prompt(loaded.processor, v, q) for v, q in zip(visuals, ["Which way?", "Up?", "Go?"])]
    inputs = encode_batch(loaded.processor, texts, visuals, padding_side="left")

    def steer(step, rows, scores):  # row 0 opens a block at its step 2, row 1 ends at its step 5
        bias = torch.zeros_like(scores)
        step = torch.as_tensor(step, device=scores.device).expand(rows.shape)
        bias[:, t.start] += 1e4 * ((rows == 0) & (step == 2))
        bias[:, t.im_end] += 1e4 * ((rows == 1) & (step == 5))
        return scores + bias

    sampling = SamplingConfig(max_new_tokens=12, temperature=0.9, top_p=0.95)
    seeds = [1, 2, 3]
    reference = generate_with_latents(loaded.model, inputs, t, loaded.latent.latent_size, sampling, seeds=seeds,
                                      logits_processor=steer)
    eager = Engine(loaded.model, t, loaded.latent.latent_size, 2, compile=False, check_every=4)
    graphs = Engine(loaded.model, t, loaded.latent.latent_size, 2, compile=True, check_every=4)
    assert graphs.compiled
    graphs.reserve(inputs["input_ids"].shape[1] + sampling.max_new_tokens)
    graphs.warm_up()
    after_warm_up = graphs.compiles
    outputs = [e.generate(inputs, sampling, seeds=seeds, logits_processor=steer) for e in (eager, graphs)]
    for ours in outputs:
        assert [r.token_ids for r in ours] == [r.token_ids for r in reference]
        for a, b in zip(ours, reference):
            torch.testing.assert_close(a.logprobs, b.logprobs, rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(a.latent_vectors, b.latent_vectors, rtol=1e-3, atol=1e-3)
    assert reference[0].token_ids[2] == t.start and reference[1].finished
    graphs.generate(encode_batch(loaded.processor, texts[::-1], visuals[::-1], padding_side="left"), sampling)
    assert graphs.compiles == after_warm_up
