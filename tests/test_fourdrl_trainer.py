"""The 4DRL trainer in real GRPO steps on the tiny checkpoint (spec fourdrl.md sections 3-5, 11, 13):
replayed log-probs equal the sampling ones, the loss takes text tokens only, rewards and group
advantages, the frozen latent reference, LoRA.

A random tiny model rarely samples `<|latent_start|>` on its own, so rollouts are steered with the
trainer's `rollout_logits_processor` (generate_with_latents' hook: it changes what the sampler sees,
never the reported log-probs), as tests/test_generation.py does.
"""

from __future__ import annotations

import pytest
import torch

from dift.core.checkpoint import load_latent_model
from dift.core.replay import replay_logprobs
from fourdrl.config import FourDRLConfig
from fourdrl.data import build_rl_dataset, read_rl_records
from fourdrl.lora import build_lora_config, default_lora_targets, merge_lora_checkpoint
from fourdrl.rewards import accuracy_reward, format_reward
from fourdrl.trainer import LatentGRPOTrainer, merge_videos, split_videos, text_token_mask, unique_prompts
from scripts.make_demo_rl_data import write_demo_rl_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")
G = 2


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory):
    return write_demo_rl_data(tmp_path_factory.mktemp("rl-data"), num_samples=4, seed=0, num_frames=2, size=56)


def alternating_reward(completions, **kwargs) -> list[float]:
    """1, 0, 1, 0, ...: every group of two has one good and one bad completion, so no advantage is 0."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def steer(plan: dict[int, dict[int, int]]):
    """A rollout_logits_processor: plan[row][step] = the token that row must take at that step."""
    def processor(step, rows, scores):
        scores = scores.clone()
        for i, r in enumerate(rows.tolist()):
            token = plan.get(r, {}).get(step)
            if token is not None:
                scores[i, token] += 1e4
        return scores
    return processor


def force_texts(tokenizer, texts: dict[int, str], im_end: int) -> dict[int, dict[int, int]]:
    """A steering plan that makes row r generate exactly texts[r] then <|im_end|>."""
    plan = {}
    for row, text in texts.items():
        ids = tokenizer.encode(text, add_special_tokens=False) + [im_end]
        plan[row] = dict(enumerate(ids))
    return plan


def make_trainer(tiny_latent, rl_data, tmp_path, reward_funcs=(alternating_reward,), peft=None,
                 trainer_class=LatentGRPOTrainer, **overrides) -> LatentGRPOTrainer:
    settings = dict(output_dir=str(tmp_path), exp_name="run", num_generations=G, per_device_train_batch_size=4,
                    max_completion_length=12, max_steps=1, gradient_accumulation_steps=1, save_strategy="no",
                    learning_rate=1e-3, disable_tqdm=True, seed=0, data_seed=0, reward_weights=None)
    settings.update(overrides)
    args = FourDRLConfig(**settings)
    loaded = load_latent_model(tiny_latent, dtype=torch.float32)
    loaded.model.freeze_vision_tower()
    peft_config = None
    if peft is not None:
        peft_config = build_lora_config(peft, loaded.model, loaded.token_ids)
    return trainer_class(model=loaded.model, reward_funcs=list(reward_funcs), args=args,
                         train_dataset=build_rl_dataset(read_rl_records(rl_data, progress=False)),
                         processing_class=loaded.processor, peft_config=peft_config)


def block_plan(t) -> dict[int, dict[int, int]]:
    # Rows 0 and 2 imagine early, row 3 twice (the second block cut by max_completion_length), row 1 never.
    return {0: {1: t.start}, 2: {0: t.start, 8: t.im_end}, 3: {2: t.start, 9: t.start}}


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_text_token_mask_and_groups(tiny_latent):
    t = load_latent_model(tiny_latent).token_ids
    ids = torch.tensor([5, t.start, t.pad, t.pad, t.end, 7, t.im_end])
    assert text_token_mask(ids, t).tolist() == [True, False, False, False, False, True, True]
    assert text_token_mask(ids, t, start_in_loss=True).tolist() == [True, True, False, False, False, True, True]
    assert unique_prompts(["a", "a", "b", "b"], 2) == ["a", "b"]
    with pytest.raises(ValueError, match="rows 2-3 are not copies"):
        unique_prompts(["a", "a", "b", "c"], 2)
    with pytest.raises(ValueError, match="not whole groups"):
        unique_prompts(["a", "a", "b"], 2)


def test_videos_split_per_prompt_and_merge_back(tiny_latent, rl_data):
    from dift.core.inputs import encode_batch
    from fourdrl.data import load_rl_frames, prompt_frames_and_question

    loaded = load_latent_model(tiny_latent)
    rows = build_rl_dataset(read_rl_records(rl_data, progress=False))
    visuals = [load_rl_frames(prompt_frames_and_question(rows[i]["prompt"])[0]) for i in range(3)]
    inputs = encode_batch(loaded.processor, ["<|vision_start|><|video_pad|><|vision_end|>x"] * 3, visuals,
                          padding_side="left")
    videos = split_videos(inputs)
    assert len(videos) == 3 and videos[1]["video_grid_thw"].shape == (1, 3)
    merged = merge_videos([videos[0], videos[1], videos[2]])
    for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(merged[key], inputs[key])


# ---------------------------------------------------------------------------------------------
# Real trainer steps


def test_loss_logprobs_equal_sampling_logprobs_with_latent_blocks(tiny_latent, rl_data, tmp_path):
    """The log-probs the loss uses (replay agreement is measured on exactly that tensor) equal the sampling
    ones to 1e-5 in float32 on completions with latent blocks; with replay off (the original's static
    <|latent_pad|> embedding) they do not: the check has teeth."""
    results = {}
    for replay in (True, False):
        trainer = make_trainer(tiny_latent, rl_data, tmp_path / str(replay), latent_replay=replay)
        trainer.rollout_logits_processor = steer(block_plan(trainer.latent_token_ids))
        trainer.train()
        results[replay] = trainer.state.log_history[0]
    on, off = results[True], results[False]
    assert on["completions/latent_blocks_mean"] == off["completions/latent_blocks_mean"] == 1.0  # (1 + 0 + 1 + 2) / 4
    assert on["replay/max_abs_logprob_diff"] < 1e-5
    assert off["replay/max_abs_logprob_diff"] > 1e-3
    assert on["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the initial policy, replayed too
    for key in ("time/rollout", "time/logprobs", "time/update"):
        assert on[key] > 0


class GradientRecorder(LatentGRPOTrainer):
    """Instrumentation: records d(loss)/d(log-prob) of every scored completion token of the policy forward."""

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        if logps.requires_grad:
            ids, mask = input_ids[:, -logits_to_keep:], attention_mask[:, -logits_to_keep:]
            logps.register_hook(lambda grad: self.recorded.append((ids, mask, grad)))
        return logps, entropies, aux


@pytest.mark.parametrize("start_in_loss", [False, True], ids=["text-only", "latent_start_in_loss"])
def test_latent_tokens_take_no_gradient_and_text_after_a_block_does(tiny_latent, rl_data, tmp_path, start_in_loss):
    trainer = make_trainer(tiny_latent, rl_data, tmp_path, trainer_class=GradientRecorder,
                           latent_start_in_loss=start_in_loss)
    trainer.recorded = []
    t = trainer.latent_token_ids
    trainer.rollout_logits_processor = steer(block_plan(t))
    trainer.train()
    [(ids, mask, grad)] = trainer.recorded
    latent = torch.isin(ids, torch.tensor([t.pad, t.end]))
    starts = ids == t.start
    assert latent.any() and starts.any()
    assert (grad[latent] == 0).all() and (grad[~mask.bool()] == 0).all()
    assert (grad[starts] != 0).all() if start_in_loss else (grad[starts] == 0).all()
    # Every text token gets gradient, those right after a block's <|latent_end|> included.
    text = mask.bool() & ~latent & ~starts
    assert (grad[text] != 0).all()
    after_block = torch.zeros_like(text)
    after_block[:, 1:] = ids[:, :-1] == t.end
    assert (after_block & mask.bool()).sum() >= 2 and (grad[after_block & mask.bool()] != 0).all()


def test_rewards_and_group_advantages_on_hand_made_completions(tiny_latent, rl_data, tmp_path):
    """Completions forced token by token; the rewards are the two reward functions' (weights 1.0 / 0.2)
    and each advantage is (r - group mean) / (group std + 1e-4), std with n - 1 (spec section 4)."""
    trainer = make_trainer(tiny_latent, rl_data, tmp_path, reward_funcs=(accuracy_reward, format_reward),
                           reward_weights=[1.0, 0.2], max_completion_length=24)
    rows = [trainer.train_dataset[i] for i in (0, 0, 1, 1)]
    gt = [rows[0]["solution"], rows[2]["solution"]]
    wrong = [next(c for c in "ABCD" if c != g) for g in gt]
    texts = {0: f"<think>it moves</think> <answer>{gt[0]}</answer>",  # right, well formed: 1.2
             1: f"<answer>{gt[0]}</answer>",  # right, no think: 1.0
             2: f"<think>x</think><answer>{wrong[1]}</answer>",  # wrong, well formed: 0.2
             3: f"<think>x</think><answer>{wrong[1]}</answer>"}  # the same: the group's std is 0
    trainer.rollout_logits_processor = steer(force_texts(trainer.processing_class.tokenizer, texts,
                                                         trainer.latent_token_ids.im_end))
    trainer.model.train()
    out = trainer._generate_and_score_completions(rows)
    texts_seen = [trainer.processing_class.tokenizer.decode(ids[m.bool()]) for ids, m in
                  zip(out["completion_ids"], out["completion_mask"])]
    assert texts_seen == [texts[i] + "<|im_end|>" for i in range(4)]
    rewards = torch.tensor([1.2, 1.0, 0.2, 0.2])
    expected = torch.cat([(g - g.mean()) / (g.std() + 1e-4) for g in rewards.view(2, 2)])
    torch.testing.assert_close(out["advantages"], expected)
    # Group 1: mean 1.1, std 0.1414 -> +-0.7066; group 2: equal rewards, no signal.
    assert out["advantages"].tolist() == pytest.approx([0.7066, -0.7066, 0.0, 0.0], abs=1e-3)
    assert trainer._metrics["train"]["reward"][-1] == pytest.approx(rewards.mean().item())
    assert len(out["replay_rows"]) == 4


def test_reference_is_the_frozen_latent_policy_copy(tiny_latent, rl_data, tmp_path):
    trainer = make_trainer(tiny_latent, rl_data, tmp_path)
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    assert type(ref).__name__ == "LatentQwen2_5_VL" and not ref.training
    assert not any(p.requires_grad for p in ref.parameters())
    assert ref is not trainer.model
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.rollout_logits_processor = steer(block_plan(trainer.latent_token_ids))
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    vision = {n for n in before if n.startswith("model.visual.")}
    assert vision and not moved & vision  # the frozen tower never changes
    assert moved == set(before) - vision  # every other parameter does
    for n, p in ref.named_parameters():  # the reference stays the initial policy
        assert torch.equal(p, before[n]), n


def test_lora_changes_only_adapters_and_latent_rows_and_merges(tiny_latent, rl_data, tmp_path):
    from trl import ModelConfig

    model_args = ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    trainer = make_trainer(tiny_latent, rl_data, tmp_path, peft=model_args)
    assert trainer.ref_model is None  # the reference is the policy with its adapters disabled
    peft_model = trainer.model
    base = peft_model.get_base_model()
    t = trainer.latent_token_ids
    initial = load_latent_model(tiny_latent, dtype=torch.float32).model
    initial_embed = initial.get_input_embeddings().weight.detach().clone()
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    trainer.rollout_logits_processor = steer(block_plan(t))
    trainer.train()
    after = dict(peft_model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all("lora_" in n or "trainable_tokens_delta" in n for n in moved)
    assert any("lora_B" in n for n in moved) and any("trainable_tokens_delta" in n for n in moved)
    assert all(p.requires_grad == ("lora_" in n or "trainable_tokens_delta" in n) for n, p in after.items())
    # The effective embedding changed at the latent rows only.
    changed = (base.get_input_embeddings().weight.detach() - initial_embed).abs().sum(-1).nonzero()[:, 0].tolist()
    assert changed == sorted(t.latent)

    trainer.save_model(str(tmp_path / "adapter"))
    merged_dir = merge_lora_checkpoint(tmp_path / "adapter", tmp_path / "merged", base=tiny_latent)
    merged = load_latent_model(merged_dir, dtype=torch.float32)
    # The merged checkpoint scores a completion with a latent block as the adapted model does.
    from dift.core.conversation import render_generation_prompt
    from dift.core.inputs import encode_batch
    from fourdrl.data import load_rl_frames, prompt_frames_and_question

    frames, question = prompt_frames_and_question(trainer.train_dataset[0]["prompt"])
    visual = load_rl_frames(frames)
    inputs = encode_batch(merged.processor, [render_generation_prompt(merged.processor, visual, question)], [visual],
                          padding_side="left")
    completion = [[11, t.start, t.pad, t.pad, t.pad, t.pad, t.end, 12, 13, t.im_end]]
    vectors = [torch.randn(4, base.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        adapted = replay_logprobs(base, inputs, completion, vectors).logprobs
        full = replay_logprobs(merged.model, inputs, completion, vectors).logprobs
        with peft_model.disable_adapter():
            reference = replay_logprobs(base, inputs, completion, vectors).logprobs
    torch.testing.assert_close(full, adapted, rtol=0, atol=1e-5)
    assert (adapted - reference).abs().max() > 1e-4  # the adapters did change the model


def test_default_lora_targets_are_the_language_models_linears(tiny_latent):
    import re

    model = load_latent_model(tiny_latent).model
    pattern = re.compile(default_lora_targets(model))
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    hit = [n for n in linear if pattern.fullmatch(n)]
    assert hit and all(n.startswith("model.language_model.layers.") for n in hit)
    assert {n for n in linear if n.startswith("model.language_model.")} == set(hit)
    assert not any(pattern.fullmatch(n) for n in linear if n.startswith("model.visual.") or n == "lm_head")
