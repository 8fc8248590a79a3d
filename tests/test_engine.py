"""The generation engine (dift.core.engine) against the reference loop (dift.core.generation).

Every test compares outputs, on the untied seeded-head tiny model (its greedy outputs depend on the
input): engine == reference batch == each row alone, tokens identical, fed vectors and log-probs
allclose. Latent blocks and early ends are forced with a logits processor (a +1e4 bias at a row's
chosen step), as in tests/test_generation.py; the engine's processor sees each slot's own step.
"""

from __future__ import annotations

import pytest
import torch

from dift.core.checkpoint import load_latent_model
from dift.core.conversation import render_generation_prompt
from dift.core.engine import Engine
from dift.core.generation import (
    GenerationResult,
    Question,
    SamplingConfig,
    answer_questions,
    generate_with_latents,
)
from dift.core.inputs import encode_batch
from dift.core.replay import replay_results
from scripts.synthetic_media import moving_square_frames

K = 4  # the tiny checkpoint's latent_size
pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = SamplingConfig(max_new_tokens=16, do_sample=False)
SAMPLED = SamplingConfig(max_new_tokens=16, temperature=0.7, top_p=0.9, top_k=50)


@pytest.fixture(scope="module")
def loaded(tiny_latent_untied):
    torch.manual_seed(0)
    return load_latent_model(tiny_latent_untied, dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(loaded):
    """Five prompts of different lengths, videos and images mixed."""
    frames = moving_square_frames(4, direction="right")
    items = [(frames, "Where does the red square move?\n\nA. Left\nB. Right\nC. Up\nD. Down"),
             (frames[1].resize((140, 112)), "What colour is the square? Answer in one word, please."),
             (moving_square_frames(2, direction="up", seed=3), "Up or down?"),
             (frames[2].resize((56, 56)), "Is it red?"),
             (moving_square_frames(6, direction="left", seed=5), "Which way, and how fast, does it go? A. Left B. Right")]
    return [render_generation_prompt(loaded.processor, v, q) for v, q in items], [v for v, _ in items]


def encode(loaded, prompts, rows):
    texts, visuals = prompts
    return encode_batch(loaded.processor, [texts[r] for r in rows], [visuals[r] for r in rows], padding_side="left")


def steer(plan: dict[int, dict[int, int]], row_map=None):
    """plan[row][step] = token to force for that row at its step. Works for the reference's processor
    (one step for all rows, rows = batch indices) and the engine's (a step per slot, rows = result
    indices, -1 for an empty slot)."""
    def processor(step, rows, scores):
        scores = scores.clone()
        steps = step.tolist() if isinstance(step, torch.Tensor) else [step] * rows.numel()
        for i, (r, s) in enumerate(zip(rows.tolist(), steps)):
            token = plan.get(row_map[r] if row_map else r, {}).get(s)
            if token is not None:
                scores[i, token] += 1e4
        return scores
    return processor


def reference(loaded, inputs, sampling, plan, **kwargs) -> list[GenerationResult]:
    return generate_with_latents(loaded.model, inputs, loaded.token_ids, K, sampling, logits_processor=steer(plan),
                                 **kwargs)


def engine(loaded, slots, check_every=3, compile=False) -> Engine:
    return Engine(loaded.model, loaded.token_ids, K, slots, compile=compile, check_every=check_every)


def assert_same(a: GenerationResult, b: GenerationResult):
    assert a.token_ids == b.token_ids
    assert a.finished == b.finished
    torch.testing.assert_close(a.latent_vectors, b.latent_vectors, rtol=1e-4, atol=1e-5)
    if a.logprobs is None or b.logprobs is None:
        assert a.logprobs is None and b.logprobs is None
    else:
        torch.testing.assert_close(a.logprobs, b.logprobs, rtol=1e-4, atol=1e-4)


def plan_for(t):
    """Row 0 imagines at step 2 (pads 3-6, end 7) while row 1 opens its block at step 7 (in the same
    step row 0 leaves) and ends at 13; row 2 opens at 3 and again at 9; row 3 ends at step 4; row 4
    opens at 0 and 6. Early ends free slots mid-run, so later rows are admitted while others decode."""
    return {0: {2: t.start}, 1: {7: t.start, 13: t.im_end}, 2: {3: t.start, 9: t.start}, 3: {4: t.im_end},
            4: {0: t.start, 6: t.start}}


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("slots", [5, 2], ids=["all-in", "refilled"])
def test_engine_equals_reference_and_one_by_one(loaded, prompts, sampling, slots):
    t, rows, seeds = loaded.token_ids, [0, 1, 2, 3, 4], [11, 12, 13, 14, 15]
    plan = plan_for(t)
    inputs = encode(loaded, prompts, rows)
    batch = reference(loaded, inputs, sampling, plan, seeds=seeds)
    ours = engine(loaded, slots).generate(inputs, sampling, seeds=seeds, logits_processor=steer(plan))
    assert [r.token_ids.count(t.start) for r in ours] == [1, 1, 2, 0, 2]
    assert [r.finished for r in ours] == [False, True, False, True, False]
    assert [len(r.token_ids) for r in ours] == [16, 14, 16, 5, 16]
    for r in range(5):
        alone = generate_with_latents(loaded.model, encode(loaded, prompts, [r]), t, K, sampling, seeds=[seeds[r]],
                                      logits_processor=steer(plan, row_map={0: r}))[0]
        assert_same(ours[r], batch[r])
        assert_same(ours[r], alone)
    if sampling.do_sample:  # the seeds matter: other seeds, other tokens
        other = engine(loaded, slots).generate(inputs, sampling, seeds=[1, 2, 3, 4, 5], logits_processor=steer(plan))
        assert sum(a.token_ids != b.token_ids for a, b in zip(ours, other)) >= 4


def test_rows_enter_and_leave_blocks_in_the_same_step(loaded, prompts):
    """With all rows admitted together, row 0 leaves its block (<|latent_end|>) in the very step row 1
    enters one (<|latent_start|>), and row 2 is inside a block in the step row 1 emits it."""
    t = loaded.token_ids
    plan = plan_for(t)
    ours = engine(loaded, 5).generate(encode(loaded, prompts, [0, 1, 2, 3, 4]), GREEDY, logits_processor=steer(plan))
    assert ours[0].token_ids[7] == t.end and ours[1].token_ids[7] == t.start
    assert ours[2].token_ids[7] == t.pad and ours[4].token_ids[7] == t.pad
    for r in ours:  # one fed vector per emitted pad
        assert r.latent_vectors.shape == (r.token_ids.count(t.pad), loaded.model.config.text_config.hidden_size)


@pytest.mark.parametrize("ablation", ["zero", "noise"])
def test_latent_ablations_equal_reference(loaded, prompts, ablation):
    t = loaded.token_ids
    plan, seeds = plan_for(t), [5, 6, 7, 8, 9]
    inputs = encode(loaded, prompts, [0, 1, 2, 3, 4])
    batch = reference(loaded, inputs, GREEDY, plan, seeds=seeds, latent_ablation=ablation)
    ours = engine(loaded, 2).generate(inputs, GREEDY, seeds=seeds, logits_processor=steer(plan),
                                      latent_ablation=ablation)
    for a, b in zip(ours, batch):
        assert_same(a, b)
    assert any(r.latent_vectors.shape[0] for r in ours)


def test_shared_prefix_groups(loaded, prompts):
    """group_size G: one prefill per prompt fills G slots (rows u * G + j), equal to the reference's groups."""
    t, group = loaded.token_ids, 3
    plan = {0: {1: t.start}, 2: {4: t.start}, 4: {2: t.start, 10: t.im_end}, 7: {0: t.start, 8: t.start}}
    inputs, seeds = encode(loaded, prompts, [0, 1, 2]), list(range(100, 109))
    sampling = SamplingConfig(max_new_tokens=14, temperature=1.0, top_p=0.9)
    batch = reference(loaded, inputs, sampling, plan, seeds=seeds, group_size=group)
    ours = engine(loaded, 4).generate(inputs, sampling, seeds=seeds, group_size=group, logits_processor=steer(plan))
    assert len(ours) == 9
    for a, b in zip(ours, batch):
        assert_same(a, b)
    assert len({tuple(r.token_ids) for r in ours[3:6]}) == 3


def test_repetition_penalty_equal_reference(loaded, prompts):
    sampling = SamplingConfig(max_new_tokens=10, do_sample=False, repetition_penalty=1e4)
    inputs = encode(loaded, prompts, [1, 3, 2])
    for a, b in zip(engine(loaded, 2).generate(inputs, sampling), reference(loaded, inputs, sampling, {})):
        assert_same(a, b)
        assert len(set(a.token_ids)) == 10


def test_replay_logprobs_equal_engine_logprobs(loaded, prompts):
    t = loaded.token_ids
    sampling = SamplingConfig(max_new_tokens=16, temperature=0.8, top_p=0.95, top_k=100)
    inputs = encode(loaded, prompts, [0, 1, 2, 3, 4])
    results = engine(loaded, 2).generate(inputs, sampling, seeds=[1, 2, 3, 4, 5], logits_processor=steer(plan_for(t)))
    with torch.no_grad():
        out = replay_results(loaded.model, inputs, results, temperature=sampling.temperature)
    for i, r in enumerate(results):
        n = len(r.token_ids)
        assert out.mask[i].sum() == n
        torch.testing.assert_close(out.logprobs[i, :n], r.logprobs, rtol=1e-4, atol=1e-4)


def questions_for(prompts, n: int) -> list[Question]:
    texts, visuals = prompts
    asks = ["Where does it move?\n\nA. Left\nB. Right", "What colour?", "Up or down?", "Red?", "Which way? A. Left"]
    return [Question(visual=visuals[i % 5], question=asks[(3 * i) % 5] + " " * (i // 5), seed=i) for i in range(n)]


def test_answer_questions_engine_in_input_order(loaded, prompts):
    """More questions than slots; each answer depends only on its question and seed: the engine's
    answers equal the reference's one batch at a time, and come back in input order."""
    questions = questions_for(prompts, 7)
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=50)
    by_engine = list(answer_questions(loaded, questions, sampling, batch_size=3, progress=False, engine=True,
                                      compile=False))
    by_reference = list(answer_questions(loaded, questions, sampling, batch_size=2, progress=False, engine=False))
    assert [i for i, _ in by_engine] == list(range(7))
    for (_, a), (_, b) in zip(by_engine, by_reference):
        assert_same(a, b)
        assert a.logprobs is None and a.text == b.text


def test_compiled_step_equals_eager_and_never_recompiles(loaded, prompts):
    """The compiled engine gives the eager engine's tokens; after the warm-up, a whole evaluation-like
    run (more prompts than slots, early ends, refills, latent blocks) and a second run compile nothing."""
    t = loaded.token_ids
    plan = plan_for(t)
    inputs = encode(loaded, prompts, [0, 1, 2, 3, 4])
    eager = engine(loaded, 2).generate(inputs, SAMPLED, seeds=[1, 2, 3, 4, 5], logits_processor=steer(plan))
    compiled = engine(loaded, 2, compile=True)
    compiled.reserve(inputs["input_ids"].shape[1] + SAMPLED.max_new_tokens)  # the run's longest sequence
    compiled.warm_up()
    assert compiled.compiles >= 1
    after_warm_up = compiled.compiles
    ours = compiled.generate(inputs, SAMPLED, seeds=[1, 2, 3, 4, 5], logits_processor=steer(plan))
    assert compiled.compiles == after_warm_up
    for a, b in zip(ours, eager):
        assert_same(a, b)
    again = compiled.generate(encode(loaded, prompts, [4, 2, 0, 3]), GREEDY, seeds=[1, 2, 3, 4])
    assert compiled.compiles == after_warm_up
    assert [len(r.token_ids) for r in again] == [16] * 4


@pytest.mark.parametrize("module, required", [
    ("evaluation.dsr_eval", ["--model_path", "m", "--benchmark_path", "b", "--video_root", "v"]),
    ("dift.inference", ["--question", "q", "--video", "x.mp4"])])
def test_engine_and_compile_flags(module, required):
    """--engine is on by default (--no_engine: the reference loop); --compile defaults to None (auto:
    CUDA only), --compile / --no_compile force it."""
    import importlib

    from dift.core.cli import parse_cli_args

    make_parser = importlib.import_module(module).make_parser
    for extra, engine_on, compiled in [([], True, None), (["--no_engine"], False, None), (["--compile"], True, True),
                                       (["--no_compile"], True, False), (["--compile", "false"], True, False)]:
        (args,) = parse_cli_args(make_parser(), required + extra)
        assert (args.engine, args.compile) == (engine_on, compiled), extra


def test_fourdrl_rollouts_on_the_engine_equal_the_reference(tiny_latent_untied, tmp_path):
    """LatentGRPOTrainer.latent_rollout with --rollout_engine returns what the reference loop returns
    (same seeds: TRL's per-row seeds come from torch's global RNG), latent blocks included."""
    from fourdrl.config import FourDRLConfig
    from fourdrl.data import build_rl_dataset, read_rl_records
    from fourdrl.trainer import LatentGRPOTrainer
    from scripts.make_demo_rl_data import write_demo_rl_data

    data = write_demo_rl_data(tmp_path / "rl", num_samples=2, seed=0, num_frames=2, size=56)
    args = FourDRLConfig(output_dir=str(tmp_path / "out"), exp_name="run", num_generations=2,
                         per_device_train_batch_size=4, max_completion_length=12, max_steps=1, save_strategy="no",
                         disable_tqdm=True, seed=0, data_seed=0, reward_weights=None, beta=0.0)
    loaded = load_latent_model(tiny_latent_untied, dtype=torch.float32)
    dataset = build_rl_dataset(read_rl_records(data, progress=False))
    trainer = LatentGRPOTrainer(model=loaded.model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                                args=args, train_dataset=dataset, processing_class=loaded.processor)
    t = trainer.latent_token_ids
    trainer.rollout_logits_processor = steer({0: {1: t.start}, 1: {3: t.start, 9: t.im_end}, 3: {0: t.start}})
    prompts = [dataset[i]["prompt"] for i in (0, 0, 1, 1)]
    outputs = {}
    for on in (False, True):
        trainer.args.rollout_engine = on
        torch.manual_seed(7)
        outputs[on] = trainer.latent_rollout(prompts)
    reference, ours = outputs[False], outputs[True]
    assert ours["completion_ids"] == reference["completion_ids"]
    assert ours["env_mask"] == reference["env_mask"] and ours["prompt_ids"] == reference["prompt_ids"]
    assert [ids.count(t.start) for ids in ours["completion_ids"]] == [1, 1, 0, 1]
    for a, b in zip(ours["logprobs"], reference["logprobs"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-4)
