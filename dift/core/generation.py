"""Latent-aware batched generation: the reference sampling loop of inference, evaluation and RL rollouts
(spec model_and_dift.md section 5, "Our rule (decided)"). The generation engine (`dift.core.engine`:
static KV slots, a compiled step, continuous batching) gives the same outputs and is what
`answer_questions` uses by default; this loop is the readable definition it is tested against.

The model imagines by feeding its own last hidden state back as the next input. Each row of a batch
carries its own latent state: a row that emits `<|latent_start|>` embeds it normally at the next
step, then for K = `latent_size` steps is fed the last-layer post-norm hidden state of the position
before (emitting `<|latent_pad|>`), then `<|latent_end|>` is forced and normal decoding resumes.
Tokens sampled inside a block are discarded. Rows outside a block decode normally in the same step.

The loop reads top to bottom: prefill the left-padded prompts into a KV cache, then per step
choose one token per row, record it, drop finished rows (from the batch and the cache), build the
next input (token embedding, or the fed-back hidden state) and run one cached forward. Per-row
state lives in tensors; the only per-row Python work is drawing from each row's own
`torch.Generator` (drawn once, before the loop), so a row's output depends on its prompt and seed
alone, never on its batch.

The sampling rules (penalty, top-k, the top-p draw) live in `dift.core.sampling` (re-exported here).
Every sampling field is explicit (`SamplingConfig`): the checkpoint's generation_config.json
(temperature 0.1, top-k 1, repetition penalty 1.05 in Qwen2.5-VL's) is never consulted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from .conversation import render_generation_prompt
from .decoding import LATENT_ABLATIONS, SamplingConfig
from .inputs import encode_batch
from .kv_cache import growing_cache
from .model import mm_token_type_ids_from_ids
from .positions import model_position_ids
from .sampling import (
    NUCLEUS_CANDIDATES,  # noqa: F401  (re-exported)
    apply_repetition_penalty,
    filter_top_k,
    sample_from_scores,
)
from .tokens import IM_END, IM_START, LatentTokenIds

log = logging.getLogger(__name__)

# Vision inputs of a processor batch that the prefill forward takes.
VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class GenerationResult:
    """One row's output."""

    token_ids: list[int]  # generated ids only (no prompt); ends with its stop token if the row finished
    latent_vectors: torch.Tensor  # (n_latent_pads, hidden) float32 on CPU: the vector fed at each <|latent_pad|>
    logprobs: torch.Tensor | None  # (len(token_ids),) float32: log_softmax(logits / T)[emitted id], forced
    # ones included; None when generated with return_logprobs=False
    finished: bool  # emitted a stop token (default <|im_end|>) before max_new_tokens
    text: str = ""  # decode_answer_text(...) of token_ids


# ---------------------------------------------------------------------------------------------
# Pieces of the loop (all but the first are pure tensor functions)


def prompt_positions(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions of a padded prompt batch, (3, B, T), and each row's next position, (B,),
    by the original's rule (`dift.core.positions`).

    Generated tokens continue from the row's largest prompt position + 1 on all three axes (what
    upstream generation does through `rope_deltas`); replay uses this same rule.
    """
    input_ids = inputs["input_ids"]

    def on_device(key):
        value = inputs.get(key)
        return None if value is None else value.to(input_ids.device)

    mm_types = on_device("mm_token_type_ids")
    if mm_types is None:
        mm_types = mm_token_type_ids_from_ids(input_ids, model.config)
    return model_position_ids(model.config, input_ids, mm_types, on_device("image_grid_thw"),
                              on_device("video_grid_thw"), on_device("second_per_grid_ts"),
                              on_device("attention_mask"))


def matched_norm_noise(hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Gaussian `noise` (one float32 draw per row) rescaled to the norm of each row of `hidden`."""
    scale = hidden.float().norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
    return (noise * scale).to(hidden.dtype)


def draw_row_randomness(generator: torch.Generator | None, sampling: SamplingConfig, latent_ablation: str,
                        hidden_size: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A row's draws for its whole generation, up front and in this order from its own generator:
    (max_new_tokens,) sampling uniforms (when sampling), then (max_new_tokens, hidden) Gaussian noise
    (latent_ablation "noise": step s of a block feeds the draw of step s). The reference loop and the
    engine (`dift.core.engine`) both call this, so a row's samples depend on its seed alone."""
    max_new = sampling.max_new_tokens
    uniforms = torch.rand(max_new, generator=generator, device=device) if sampling.do_sample else None
    noise = (torch.randn((max_new, hidden_size), generator=generator, device=device, dtype=torch.float32)
             if latent_ablation == "noise" else None)
    return uniforms, noise


def decode_answer_text(tokenizer, token_ids: Sequence[int]) -> str:
    """The assistant text of a generation (spec evaluation.md extraction step 1): decoded with special
    tokens kept, the text after the last `<|im_start|>assistant` (the prompt ends with one, so this
    is the whole generation unless the model opened another turn), cut at the first `<|im_end|>`, stripped."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.split(f"{IM_START}assistant")[-1].split(IM_END)[0].strip()


def _row_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def check_left_padded(attention_mask: torch.Tensor, who: str) -> None:
    if not bool(attention_mask[:, -1].all()):
        raise ValueError(f"{who} needs a LEFT-padded batch: encode_batch(..., padding_side='left')")


def prefill_batch(model, inputs, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole left-padded prompt batch (vision included) into `cache`, with the original's positions.
    Returns each row's last logits (B, V), last hidden state (B, H) and next position (B,)."""
    device = input_ids.device
    positions, next_position = prompt_positions(model, {**inputs, "input_ids": input_ids,
                                                        "attention_mask": attention_mask})
    vision = {k: inputs[k].to(device) for k in VISION_KEYS if inputs.get(k) is not None}
    mm_types = inputs.get("mm_token_type_ids")
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1,
                mm_token_type_ids=None if mm_types is None else mm_types.to(device), **vision)
    return out.logits[:, -1], out.last_hidden_state[:, -1], next_position


# ---------------------------------------------------------------------------------------------
# The loop


@torch.no_grad()
def generate_with_latents(model, inputs, token_ids: LatentTokenIds, latent_size: int, sampling: SamplingConfig,
                          seeds: Sequence[int] | None = None, latent_ablation: str = "none", progress: bool = False,
                          tokenizer=None, return_logprobs: bool = True, stop_ids: Sequence[int] | None = None,
                          logits_processor: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                          group_size: int = 1) -> list[GenerationResult]:
    """Generate from a left-padded prompt batch (`dift.core.inputs.encode_batch(..., padding_side="left")`).

    seeds: one per row; each row samples from its own generator (default: drawn from torch's global
    RNG). latent_ablation: "none" | "zero" (zeros fed in latent blocks) | "noise" (Gaussian noise
    with the norm of the hidden state it replaces, from the row's generator, drawn up front for every
    step: `draw_row_randomness`). tokenizer: fills `GenerationResult.text`. return_logprobs: False skips the per-step log-softmax over the vocabulary
    (evaluation and inference never read the log-probs; RL does). stop_ids: tokens that end a row
    (default `<|im_end|>` only; never inside a latent block, whose tokens are forced).
    logits_processor(step, rows, scores) -> scores: changes what the sampler sees (rows = the batch
    indices of the active rows); reported log-probs stay the model's.
    group_size: G > 1 samples G completions of every prompt (RL's groups). `inputs` then holds each
    prompt once; the results come G per prompt, adjacent (row u * G + j is copy j of prompt u), and
    `seeds` has one entry per result row. The vision encoding and the prefill run once per prompt and
    their KV cache is repeated to the G rows: the same tokens as a batch holding every prompt G times.
    """
    if latent_ablation not in LATENT_ABLATIONS:
        raise ValueError(f"latent_ablation must be one of {LATENT_ABLATIONS}, got {latent_ablation!r}")
    if latent_size < 1:
        raise ValueError(f"latent_size must be >= 1, got {latent_size}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    device = model.device
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs["attention_mask"].to(device)
    check_left_padded(attention_mask, "generate_with_latents")
    batch_size = input_ids.shape[0] * group_size  # result rows
    if seeds is None:
        seeds = torch.randint(0, 2**62, (batch_size,)).tolist()
    if len(seeds) != batch_size:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch_size} rows")
    max_new = sampling.max_new_tokens
    temperature = sampling.logprob_temperature
    hidden_size = model.config.get_text_config().hidden_size
    stop = torch.tensor(list(stop_ids) if stop_ids is not None else [token_ids.im_end], device=device)
    generators = (_row_generators(seeds, device)
                  if sampling.do_sample or latent_ablation == "noise" else [None] * batch_size)

    # Outputs, indexed by original row; a row that is still active at step s has emitted s tokens.
    out_tokens = torch.full((batch_size, max_new), token_ids.text_pad, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((batch_size, max_new), dtype=torch.float32, device=device) if return_logprobs else None
    out_length = torch.zeros(batch_size, dtype=torch.long, device=device)
    fed_rows, fed_vectors = [], []  # per latent step: which rows were fed, and what
    if max_new == 0:
        return _collect(out_tokens, out_logprobs, out_length, fed_rows, fed_vectors, hidden_size, stop, tokenizer)

    # Prefill: the whole prompt batch (vision included) into the KV cache.
    cache = growing_cache(model.config, max_length=input_ids.shape[1] + max_new)
    logits, hidden, next_position = prefill_batch(model, inputs, input_ids, attention_mask, cache)
    if group_size > 1:
        # Shared prefix: every prompt was encoded once; its G sampling rows start from copies of its state.
        logits, hidden, next_position, attention_mask, input_ids = (
            t.repeat_interleave(group_size, dim=0) for t in (logits, hidden, next_position, attention_mask, input_ids))
        cache.batch_repeat_interleave(group_size)

    # Per-row state, for the active rows only (rows[i] is the original index of active row i).
    rows = torch.arange(batch_size, device=device)
    pads_left = torch.zeros(batch_size, dtype=torch.long, device=device)  # pads still to emit in the block
    end_due = torch.zeros(batch_size, dtype=torch.bool, device=device)  # next token is a forced <|latent_end|>
    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros((batch_size, logits.shape[-1]), dtype=torch.bool, device=device)
        b, t = attention_mask.nonzero(as_tuple=True)  # the prompt's own tokens, not its padding
        seen[b, input_ids[b, t]] = True
    # Each row's draws for the whole generation come from its own generator up front: no per-row
    # work in the loop, and a row's samples depend on its seed alone.
    draws = [draw_row_randomness(g, sampling, latent_ablation, hidden_size, device) for g in generators]
    uniforms = torch.stack([u for u, _ in draws]) if sampling.do_sample else None
    noise = torch.stack([n for _, n in draws]) if latent_ablation == "noise" else None
    embed = model.get_input_embeddings()

    for step in tqdm(range(max_new), desc="generating", unit="tok", disable=not progress, leave=False):
        # 1. Choose each row's next token: forced inside a block, sampled outside.
        scores = logits.float()
        if seen is not None:
            scores = apply_repetition_penalty(scores, seen, sampling.repetition_penalty)
        if logits_processor is not None:
            scores = logits_processor(step, rows, scores)
        if sampling.do_sample and sampling.top_k != 1:
            scores = filter_top_k(scores / sampling.temperature, sampling.top_k)
            sampled = sample_from_scores(scores, uniforms[rows, step], sampling.top_p)
        else:  # greedy, or top-k 1 sampling (the original's evaluation, via generation_config.json): argmax
            sampled = scores.max(dim=-1).indices  # same first-maximum rule as argmax, and faster on CPU
        in_pads = pads_left > 0
        token = torch.where(end_due, token_ids.end, torch.where(in_pads, token_ids.pad, sampled))

        # 2. Record it, with its log-prob under the model's own (temperature-scaled) distribution.
        # (log_softmax is one fused pass on CPU; torch.logsumexp is several.)
        out_tokens[rows, step] = token
        if return_logprobs:
            scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
            out_logprobs[rows, step] = torch.log_softmax(scaled, dim=-1).gather(-1, token[:, None])[:, 0]
        out_length[rows] = step + 1
        if seen is not None:
            seen[torch.arange(rows.numel(), device=device), token] = True

        # 3. Advance the latent state: a sampled start opens a block of exactly latent_size pads.
        opens = ~in_pads & ~end_due & (token == token_ids.start)
        end_due = in_pads & (pads_left == 1)
        pads_left = torch.where(in_pads, pads_left - 1, torch.where(opens, latent_size, 0))

        # 4. Inside a block, the input at the new pad is the hidden state of the position before it
        #    (recorded even at the last step: replay needs a vector for every emitted pad).
        fed = None
        if bool(in_pads.any()):
            fed = hidden
            if latent_ablation == "zero":
                fed = torch.zeros_like(hidden)
            elif latent_ablation == "noise":
                fed = matched_norm_noise(hidden, noise[rows, step])
            fed_rows.append(rows[in_pads])
            fed_vectors.append(fed[in_pads])

        # 5. Drop finished rows (from the batch and the cache): they cost nothing from here on.
        done = torch.isin(token, stop)
        if step == max_new - 1:
            break
        if bool(done.any()):
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            rows, pads_left, end_due, token = rows[keep], pads_left[keep], end_due[keep], token[keep]
            in_pads, next_position = in_pads[keep], next_position[keep]
            fed = None if fed is None else fed[keep]
            attention_mask = attention_mask[keep]
            seen = None if seen is None else seen[keep]
            cache.batch_select_indices(keep)

        # 6. Next input: the token's embedding, or the fed vector inside a block.
        inputs_embeds = embed(token)
        if fed is not None:
            inputs_embeds = torch.where(in_pads[:, None], fed.to(inputs_embeds.dtype), inputs_embeds)

        # 7. One cached forward; every new position is the row's previous one + 1 on all three axes.
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows.numel(), 1))], dim=1)
        position_ids = next_position.view(1, -1, 1).expand(3, -1, 1)
        out = model(input_ids=token[:, None], inputs_embeds=inputs_embeds[:, None], attention_mask=attention_mask,
                    position_ids=position_ids, cache=cache, use_cache=True)
        logits, hidden = out.logits[:, -1], out.last_hidden_state[:, -1]
        next_position = next_position + 1

    return _collect(out_tokens, out_logprobs, out_length, fed_rows, fed_vectors, hidden_size, stop, tokenizer)


def _collect(out_tokens, out_logprobs, out_length, fed_rows, fed_vectors, hidden_size: int,
             stop: torch.Tensor, tokenizer) -> list[GenerationResult]:
    """Per-row results from the loop's batch buffers (one device->CPU copy per buffer)."""
    tokens, lengths = out_tokens.cpu(), out_length.cpu().tolist()
    logprobs = None if out_logprobs is None else out_logprobs.cpu()
    if fed_rows:
        owner = torch.cat(fed_rows).cpu()
        vectors = torch.cat(fed_vectors).float().cpu()
        # Steps were appended in order, so a stable sort by row keeps each row's vectors in pad order.
        order = torch.sort(owner, stable=True).indices
        owner, vectors = owner[order], vectors[order]
        counts = torch.bincount(owner, minlength=len(lengths)).tolist()
        per_row = list(torch.split(vectors, counts))
    else:
        per_row = [torch.zeros((0, hidden_size)) for _ in lengths]
    results, stop_ids = [], set(stop.tolist())
    for i, n in enumerate(lengths):
        ids = tokens[i, :n].tolist()
        finished = bool(n) and ids[-1] in stop_ids
        text = decode_answer_text(tokenizer, ids) if tokenizer is not None else ""
        results.append(GenerationResult(token_ids=ids, latent_vectors=per_row[i],
                                        logprobs=None if logprobs is None else logprobs[i, :n].clone(),
                                        finished=finished, text=text))
    return results


# ---------------------------------------------------------------------------------------------
# Questions in, answers out (evaluation and inference)


@dataclass
class Question:
    visual: list[Image.Image] | Image.Image  # video frames (already at 1 fps, <= 50) or one image
    question: str  # with options, WITHOUT the output-format suffix
    seed: int = 42


def answer_questions(loaded, questions: Sequence[Question], sampling: SamplingConfig, batch_size: int = 8,
                     latent_ablation: str = "none", progress: bool = True, engine: bool = True,
                     compile: bool | None = None) -> Iterator[tuple[int, GenerationResult]]:
    """Answer `questions` with a loaded DIFT model (`dift.core.checkpoint.LoadedModel`); yields
    (question index, result) in input order. engine=True (default): the generation engine
    (`dift.core.engine`) with `batch_size` slots and continuous batching, its decode step compiled
    when `compile` (None: on CUDA only); False: the reference loop, `batch_size` questions at a time.
    Either way an answer depends only on its question and seed. Log-probs are not computed
    (`result.logprobs` is None): nothing downstream of a question reads them. A row stops at
    `<|im_end|>` or `<|endoftext|>`, the end tokens of Qwen2.5-VL's generation config that the
    original's evaluation and inference stopped at."""
    processor = loaded.processor
    stop_ids = (loaded.token_ids.im_end, loaded.token_ids.text_pad)

    def encode(chunk: Sequence[Question]):
        texts = [render_generation_prompt(processor, q.visual, q.question) for q in chunk]
        return encode_batch(processor, texts, [q.visual for q in chunk], padding_side="left")

    bar = tqdm(total=len(questions), desc="answering", unit="q", disable=not progress)
    try:
        if engine:
            from .engine import engine_for  # here: the engine module builds on this one
            runner = engine_for(loaded.model, loaded.token_ids, loaded.latent.latent_size, batch_size, compile=compile)
            taken = 0

            def take(n: int):  # the next n questions, encoded when slots free up for them
                nonlocal taken
                chunk = questions[taken:taken + n]
                taken += len(chunk)
                return (encode(chunk), [q.seed for q in chunk]) if chunk else None

            ready, next_index = {}, 0
            for index, result in runner.run(take, sampling, latent_ablation=latent_ablation,
                                            tokenizer=processor.tokenizer, return_logprobs=False, stop_ids=stop_ids):
                ready[index] = result
                while next_index in ready:  # rows finish out of order; hand them back in input order
                    yield next_index, ready.pop(next_index)
                    next_index += 1
                    bar.update(1)
            return
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            results = generate_with_latents(loaded.model, encode(chunk), loaded.token_ids, loaded.latent.latent_size,
                                            sampling, seeds=[q.seed for q in chunk], latent_ablation=latent_ablation,
                                            tokenizer=processor.tokenizer, return_logprobs=False, stop_ids=stop_ids)
            for offset, result in enumerate(results):
                yield start + offset, result
            bar.update(len(chunk))
    finally:
        bar.close()
