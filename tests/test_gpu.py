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
