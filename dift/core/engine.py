"""The generation engine: the reference loop (`dift.core.generation.generate_with_latents`) rebuilt for
speed, with the same tokens, fed vectors and log-probs (tests/test_engine.py).

- **Slots and a static KV cache.** The engine decodes a fixed number of slots. Every layer's keys and
  values live in one buffer preallocated to (slots, kv heads, capacity, head dim) (`SlotLayer`); a
  slot's prompt sits at positions [0, n) and each decode step writes at the slot's own length. An
  attention mask over the whole capacity (position <= length) hides the rest, so the decode step has
  ONE shape for the whole run and can be compiled once (on CUDA with CUDA graphs).
- **One step for tokens and latents.** The next input of every slot is chosen on the device by
  `torch.where` between the token embedding and the fed-back hidden state (or the ablation's zeros /
  noise): a row entering or leaving a latent block changes no shape.
- **No host sync per step.** Finished rows are found every `check_every` steps; a row that finished
  in between takes extra steps whose outputs go to a trash column and are discarded.
- **Continuous batching.** When rows finish, their slots are refilled with the next prompts: the
  waiting prompts are prefilled together (a left-padded batch, as the reference's prefill) and each
  one's KV is copied into its slot, while the other slots keep their state. With `group_size` G one
  prefill serves the G rows of a prompt (each copy goes to its own slot, when one frees).
- **Same randomness.** A row draws its uniforms (and ablation noise) from its own seeded generator
  when it enters a slot (`draw_row_randomness`, as the reference), and samples with the reference's
  functions, so its output depends on its prompt and seed only, never on its slot or neighbours.

`Engine` holds the model, the slots and the compiled step; `Engine.generate` is `generate_with_latents`'
twin for a prompt batch, `Engine.run` the general form (prompts pulled as slots free up), used by
`dift.core.generation.answer_questions`.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .decoding import LATENT_ABLATIONS, SamplingConfig
from .generation import (
    GenerationResult,
    apply_repetition_penalty,
    check_left_padded,
    decode_answer_text,
    draw_row_randomness,
    filter_top_k,
    matched_norm_noise,
    prefill_batch,
    sample_from_scores,
)
from .kv_cache import growing_cache
from .tokens import LatentTokenIds

log = logging.getLogger(__name__)

CHECK_EVERY = 8  # decode steps between looks at which rows finished (the only host syncs of the loop)
CAPACITY_ROUND = 512  # slot capacity is a multiple of this (each new capacity compiles the step once more)


# ---------------------------------------------------------------------------------------------
# The static cache


class SlotLayer(CacheLayerMixin):
    """One decoder layer's keys and values for all slots, preallocated: (slots, kv heads, capacity, dim).

    A decode step (one new position per slot) writes slot s's key and value at `write_at[s]` (a
    tensor shared by all layers, advanced in place by the engine) and returns the whole buffers: the
    engine's mask decides what each slot attends to. Prefills do not go through it (the engine copies
    a prompt's KV in with `fill`)."""

    is_compileable = True

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_at: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.write_at = keys, values, write_at
        self.slot_index = torch.arange(keys.shape[0], device=keys.device)
        self.is_initialized = True
        for tensor in (self.keys, self.values, self.write_at, self.slot_index):
            torch._dynamo.mark_static_address(tensor)  # fixed addresses: CUDA graphs mutate them in place

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated up front
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.shape[-2] != 1:
            raise ValueError("SlotLayer takes decode steps only (one position per slot); prefill elsewhere")
        self.keys[self.slot_index, :, self.write_at] = key_states[:, :, 0]
        self.values[self.slot_index, :, self.write_at] = value_states[:, :, 0]
        return self.keys, self.values

    def fill(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put a prompt's (kv heads, n, dim) keys and values at positions [0, n) of `slot`."""
        self.keys[slot, :, :keys.shape[-2]] = keys
        self.values[slot, :, :values.shape[-2]] = values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_seq_length(self) -> int:  # per slot, not one number: the engine passes positions and the mask
        return 0

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


def slot_cache(config, slots: int, capacity: int, write_at: torch.Tensor, dtype: torch.dtype,
               device: torch.device) -> Cache:
    text = config.get_text_config(decoder=True)
    kv_heads = text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    shape = (slots, kv_heads, capacity, head_dim)
    return Cache(layers=[SlotLayer(torch.zeros(shape, dtype=dtype, device=device),
                                   torch.zeros(shape, dtype=dtype, device=device), write_at)
                         for _ in range(text.num_hidden_layers)])


# ---------------------------------------------------------------------------------------------
# Prefilled prompts waiting for a slot


@dataclass
class Request:
    """One result row, prefilled and waiting for a slot (the G rows of a prompt share kv and ids)."""

    index: int  # result index
    seed: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (kv heads, n, dim) keys and values of the prompt
    prompt_ids: torch.Tensor  # (n,) the prompt's real tokens (for the repetition penalty)
    logits: torch.Tensor  # (vocab,) at the prompt's last position
    hidden: torch.Tensor  # (hidden,) post-norm last-layer state there
    next_position: torch.Tensor  # () M-RoPE position of the first generated token


def prefill(model, inputs, seeds: Sequence[int], first_index: int = 0, group_size: int = 1) -> list[Request]:
    """Run a left-padded prompt batch (vision included) once, with the reference's prefill, and cut
    it into requests: G per prompt, result index first_index + u * G + j, seed seeds[u * G + j]."""
    device = model.device
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs["attention_mask"].to(device)
    check_left_padded(attention_mask, "the engine")
    cache = growing_cache(model.config, max_length=input_ids.shape[1])
    logits, hidden, next_position = prefill_batch(model, inputs, input_ids, attention_mask, cache)
    pads = (input_ids.shape[1] - attention_mask.sum(dim=1)).tolist()
    requests = []
    for u, pad in enumerate(pads):
        kv = [(layer.keys[u, :, pad:], layer.values[u, :, pad:]) for layer in cache.layers]
        for j in range(group_size):
            row = u * group_size + j
            requests.append(Request(first_index + row, int(seeds[row]), kv, input_ids[u, pad:], logits[u],
                                    hidden[u], next_position[u]))
    return requests


# ---------------------------------------------------------------------------------------------
# The engine


class Engine:
    """`slots` rows decoded together over a static KV cache, with one (optionally compiled) decode step.

    The engine keeps its cache and compiled step between runs (`engine_for` caches one per model and
    slot count), so a whole evaluation compiles once. `compiles` counts the step's compilations."""

    def __init__(self, model, token_ids: LatentTokenIds, latent_size: int, slots: int, capacity: int = CAPACITY_ROUND,
                 compile: bool | None = None, check_every: int = CHECK_EVERY):
        if slots < 1 or latent_size < 1 or check_every < 1:
            raise ValueError(f"slots, latent_size and check_every must be >= 1, got {slots}, {latent_size}, {check_every}")
        text = model.config.get_text_config(decoder=True)
        if any(kind != "full_attention" for kind in (getattr(text, "layer_types", None) or ["full_attention"])):
            raise ValueError("the engine's mask covers full-attention layers only (no sliding window)")
        attention = getattr(text, "_attn_implementation", None) or "sdpa"
        if attention not in ("sdpa", "eager"):  # the engine's mask is a 4-D boolean over the static cache
            raise ValueError(f"the engine needs attn_implementation 'sdpa' or 'eager', not {attention!r}")
        self.model, self.token_ids, self.latent_size, self.slots = model, token_ids, latent_size, slots
        self.check_every = check_every
        self.device = model.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.hidden_size = text.hidden_size
        self.compiled = (self.device.type == "cuda") if compile is None else bool(compile)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=self.device)  # KV filled per slot
        self.capacity = 0
        self._compiles_before = _graph_count()
        self._allocate(capacity)
        step = self._forward
        if self.compiled:
            mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on CUDA
            step = torch.compile(step, mode=mode, dynamic=False, fullgraph=False)
        self._step = step

    @property
    def compiles(self) -> int:
        """Graphs compiled since this engine was built (0 when not compiled)."""
        return _graph_count() - self._compiles_before

    def _allocate(self, capacity: int) -> None:
        """(Re)build the slot cache with room for `capacity` positions per slot, keeping what is in it."""
        old = getattr(self, "cache", None)
        self.cache = slot_cache(self.model.config, self.slots, capacity, self.lengths, self.dtype, self.device)
        if old is not None:
            for new, previous in zip(self.cache.layers, old.layers):
                new.keys[..., :self.capacity, :] = previous.keys
                new.values[..., :self.capacity, :] = previous.values
            log.info("engine: slot capacity %d -> %d positions (the decode step compiles again)",
                     self.capacity, capacity)
        self.capacity = capacity
        self.kv_positions = torch.arange(capacity, device=self.device)
        torch._dynamo.mark_static_address(self.kv_positions)

    def reserve(self, length: int) -> None:
        """Make room for sequences of `length` positions (prompt + new tokens) in every slot. The
        capacity grows by half at least, so a run of ever longer prompts compiles a few times only."""
        if length > self.capacity:
            rounded = lambda n: -(-n // CAPACITY_ROUND) * CAPACITY_ROUND  # noqa: E731
            self._allocate(max(rounded(length), rounded(self.capacity * 3 // 2)))

    # -- the decode step (the compiled part) ----------------------------------------------------

    def _forward(self, token: torch.Tensor, fed: torch.Tensor, in_pads: torch.Tensor,
                 position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One position per slot: the input is the token's embedding, or `fed` where `in_pads`; the KV
        is written at each slot's length and every slot attends to its positions [0, length]."""
        embeds = self.model.get_input_embeddings()(token)
        embeds = torch.where(in_pads[:, None], fed.to(embeds.dtype), embeds)
        mask = (self.kv_positions[None, :] <= self.lengths[:, None])[:, None, None, :]
        out = self.model.model.language_model(inputs_embeds=embeds[:, None], attention_mask={"full_attention": mask},
                                              position_ids=position.view(1, -1, 1).expand(3, -1, 1),
                                              cache=self.cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        return self.model.lm_logits(hidden), hidden

    def warm_up(self, steps: int = 3) -> None:
        """Compile (and on CUDA record the graph of) the step on idle slots; nothing is kept."""
        def zeros(*shape, dtype=torch.long):  # distinct tensors: aliased arguments would be guarded on
            return torch.zeros(shape, dtype=dtype, device=self.device)

        self.lengths.zero_()
        with torch.no_grad():
            for _ in range(steps):
                self._call_step(zeros(self.slots), zeros(self.slots, self.hidden_size, dtype=self.dtype),
                                zeros(self.slots, dtype=torch.bool), zeros(self.slots))

    def _call_step(self, token, fed, in_pads, position):
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs have been consumed
        logits, hidden = self._step(token, fed, in_pads, position)
        if self.compiled and self.device.type == "cuda":  # graph outputs are overwritten by the next replay
            logits, hidden = logits.clone(), hidden.clone()
        return logits, hidden

    # -- generation ---------------------------------------------------------------------------

    def generate(self, inputs, sampling: SamplingConfig, seeds: Sequence[int] | None = None, group_size: int = 1,
                 **kwargs) -> list[GenerationResult]:
        """`generate_with_latents` on the engine: the same arguments and results, for a left-padded batch
        (prefilled at once, rows admitted as slots free up)."""
        n_rows = inputs["input_ids"].shape[0] * group_size
        if seeds is None:
            seeds = torch.randint(0, 2**62, (n_rows,)).tolist()
        if len(seeds) != n_rows:
            raise ValueError(f"{len(seeds)} seeds for a batch of {n_rows} rows")
        batches = iter([inputs])

        def take(_: int):
            batch = next(batches, None)
            return None if batch is None else (batch, list(seeds))

        results = dict(self.run(take, sampling, group_size=group_size, **kwargs))
        return [results[i] for i in range(n_rows)]

    @torch.no_grad()
    def run(self, take: Callable[[int], tuple[dict, list[int]] | None], sampling: SamplingConfig,
            group_size: int = 1, latent_ablation: str = "none", tokenizer=None, return_logprobs: bool = True,
            stop_ids: Sequence[int] | None = None, logits_processor: Callable | None = None
            ) -> Iterator[tuple[int, GenerationResult]]:
        """Yield (result index, result) as rows finish (not in order). `take(n)` returns the next
        left-padded prompt batch (about n prompts; their result rows are numbered on from the
        previous batches', G per prompt) with one seed per result row, or None when there are no more.

        logits_processor(steps, rows, scores) -> scores: as the reference's, but per slot: `steps` (slots,)
        is each row's own step, `rows` (slots,) its result index (-1 for an empty slot)."""
        if latent_ablation not in LATENT_ABLATIONS:
            raise ValueError(f"latent_ablation must be one of {LATENT_ABLATIONS}, got {latent_ablation!r}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        run = _Run(self, sampling, group_size, latent_ablation, tokenizer, return_logprobs, stop_ids,
                   logits_processor)
        yield from run.loop(take)


class _Run:
    """The state of one `Engine.run`: per-slot tensors (index = slot) and the queue of waiting rows."""

    def __init__(self, engine: Engine, sampling, group_size, latent_ablation, tokenizer, return_logprobs,
                 stop_ids, logits_processor):
        self.e, self.sampling, self.group_size = engine, sampling, group_size
        self.ablation, self.tokenizer, self.return_logprobs = latent_ablation, tokenizer, return_logprobs
        self.processor = logits_processor
        device, slots, max_new = engine.device, engine.slots, sampling.max_new_tokens
        t = engine.token_ids
        self.stop = torch.tensor(list(stop_ids) if stop_ids is not None else [t.im_end], dtype=torch.long, device=device)
        vocab = engine.model.config.get_text_config().vocab_size
        long = dict(dtype=torch.long, device=device)
        self.slot_index = torch.arange(slots, device=device)
        # Per slot. Output buffers have one extra column: the trash where finished rows' extra steps go.
        self.tokens = torch.full((slots, max_new + 1), t.text_pad, **long)
        self.logprobs = torch.zeros((slots, max_new + 1), dtype=torch.float32, device=device)
        self.fed = torch.zeros((slots, max_new + 1, engine.hidden_size), dtype=engine.dtype, device=device)
        self.steps = torch.zeros(slots, **long)  # tokens emitted by the slot's row
        self.n_fed = torch.zeros(slots, **long)  # vectors fed to it
        self.position = torch.zeros(slots, **long)  # M-RoPE position of its next input
        self.pads_left = torch.zeros(slots, **long)
        self.end_due = torch.zeros(slots, dtype=torch.bool, device=device)
        self.active = torch.zeros(slots, dtype=torch.bool, device=device)
        self.row = torch.full((slots,), -1, **long)  # result index of the slot's row
        self.logits = torch.zeros((slots, vocab), dtype=torch.float32, device=device)
        self.hidden = torch.zeros((slots, engine.hidden_size), dtype=engine.dtype, device=device)
        self.uniforms = torch.zeros((slots, max(max_new, 1)), device=device) if sampling.do_sample else None
        self.noise = (torch.zeros((slots, max(max_new, 1), engine.hidden_size), device=device)
                      if latent_ablation == "noise" else None)
        self.seen = (torch.zeros((slots, vocab), dtype=torch.bool, device=device)
                     if sampling.repetition_penalty != 1.0 else None)
        self.owner: list[int | None] = [None] * slots  # host copy of `row` for occupied slots
        self.waiting: deque[Request] = deque()
        self.next_index = 0

    # -- admission and harvest (host side, every check_every steps) ------------------------------

    def _refill(self, take) -> None:
        """Fill free slots with waiting rows, prefilling more prompts when the queue runs dry."""
        free = [s for s, owner in enumerate(self.owner) if owner is None]
        while free:
            if not self.waiting:
                batch = take(-(-len(free) // self.group_size))
                if batch is None:
                    return
                inputs, seeds = batch
                requests = prefill(self.e.model, inputs, seeds, self.next_index, self.group_size)
                self.next_index += len(requests)
                self.waiting.extend(requests)
                self.e.reserve(max(int(r.prompt_ids.numel()) for r in requests) + self.sampling.max_new_tokens)
            self._admit(free.pop(0), self.waiting.popleft())

    def _admit(self, slot: int, request: Request) -> None:
        e = self.e
        for layer, (keys, values) in zip(e.cache.layers, request.kv):
            layer.fill(slot, keys, values)
        n = request.prompt_ids.numel()
        e.lengths[slot] = n
        self.position[slot] = request.next_position
        self.logits[slot] = request.logits.float()
        self.hidden[slot] = request.hidden
        self.steps[slot] = self.n_fed[slot] = self.pads_left[slot] = 0
        self.end_due[slot] = False
        self.active[slot] = True
        self.row[slot] = request.index
        self.owner[slot] = request.index
        generator = None
        if self.sampling.do_sample or self.ablation == "noise":
            generator = torch.Generator(device=e.device).manual_seed(request.seed)
        uniforms, noise = draw_row_randomness(generator, self.sampling, self.ablation, e.hidden_size, e.device)
        if uniforms is not None:
            self.uniforms[slot, :uniforms.numel()] = uniforms
        if noise is not None:
            self.noise[slot, :noise.shape[0]] = noise
        if self.seen is not None:
            self.seen[slot] = False
            self.seen[slot, request.prompt_ids] = True

    def _harvest(self) -> list[tuple[int, GenerationResult]]:
        """Results of the rows that finished since the last look; their slots become free."""
        active, steps, n_fed = torch.stack([self.active.long(), self.steps, self.n_fed]).cpu().tolist()
        done = [s for s, owner in enumerate(self.owner) if owner is not None and not active[s]]
        if not done:
            return []
        stop = set(self.stop.tolist())
        results = []
        for slot in done:  # only the filled part of each buffer is copied
            n = steps[slot]
            ids = self.tokens[slot, :n].tolist()
            text = decode_answer_text(self.tokenizer, ids) if self.tokenizer is not None else ""
            results.append((self.owner[slot], GenerationResult(
                token_ids=ids, latent_vectors=self.fed[slot, :n_fed[slot]].to("cpu", torch.float32, copy=True),
                logprobs=self.logprobs[slot, :n].to("cpu", copy=True) if self.return_logprobs else None,
                finished=bool(ids) and ids[-1] in stop, text=text)))
            self.owner[slot] = None
            self.row[slot] = -1
        return results

    # -- the loop -------------------------------------------------------------------------------

    def loop(self, take) -> Iterator[tuple[int, GenerationResult]]:
        e, max_new = self.e, self.sampling.max_new_tokens
        if max_new == 0:  # nothing to decode: every row is an empty result
            while (batch := take(e.slots)) is not None:
                for r in prefill(e.model, batch[0], batch[1], self.next_index, self.group_size):
                    self.next_index += 1
                    yield r.index, GenerationResult([], torch.zeros((0, e.hidden_size)),
                                                    torch.zeros(0) if self.return_logprobs else None, False)
            return
        for step in range(2**62):
            if step % e.check_every == 0:
                yield from self._harvest()
                self._refill(take)
                if all(owner is None for owner in self.owner):
                    return
            token, fed, in_pads = self._choose()
            self.logits, self.hidden = e._call_step(token, fed, in_pads, self.position)
            # Rows still going advance; a finished row's slot keeps rewriting its next position.
            e.lengths.add_(self.active.long())
            self.position += self.active.long()

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference loop's steps 1-4 for every slot at once: choose, record, advance the latent
        state, pick what a pad is fed. Returns the next input (token, fed vector, whether fed)."""
        e, sampling, t = self.e, self.sampling, self.e.token_ids
        max_new = sampling.max_new_tokens
        live = self.active
        step = self.steps.clamp(max=max_new - 1)
        col = torch.where(live, self.steps, max_new)  # finished rows write to the trash column

        # 1. Choose each row's next token: forced inside a block, sampled outside.
        scores = self.logits.float()
        if self.seen is not None:
            scores = apply_repetition_penalty(scores, self.seen, sampling.repetition_penalty)
        if self.processor is not None:
            scores = self.processor(self.steps, self.row, scores)
        if sampling.do_sample and sampling.top_k != 1:
            scores = filter_top_k(scores / sampling.temperature, sampling.top_k)
            sampled = sample_from_scores(scores, self.uniforms[self.slot_index, step], sampling.top_p)
        else:
            sampled = scores.max(dim=-1).indices
        in_pads = self.pads_left > 0
        token = torch.where(self.end_due, t.end, torch.where(in_pads, t.pad, sampled))

        # 2. Record it, with its log-prob under the model's own (temperature-scaled) distribution.
        self.tokens[self.slot_index, col] = token
        if self.return_logprobs:
            temperature = sampling.logprob_temperature
            scaled = self.logits.float() / temperature if temperature != 1.0 else self.logits.float()
            self.logprobs[self.slot_index, col] = torch.log_softmax(scaled, dim=-1).gather(-1, token[:, None])[:, 0]
        if self.seen is not None:
            self.seen[self.slot_index, token] = True

        # 3. Advance the latent state.
        opens = ~in_pads & ~self.end_due & (token == t.start)
        self.end_due = in_pads & (self.pads_left == 1)
        self.pads_left = torch.where(in_pads, self.pads_left - 1, torch.where(opens, e.latent_size, 0))

        # 4. What a pad is fed: the hidden state of the position before (or the ablation's), recorded.
        fed = self.hidden
        if self.ablation == "zero":
            fed = torch.zeros_like(fed)
        elif self.ablation == "noise":
            fed = matched_norm_noise(fed, self.noise[self.slot_index, step])
        fed_at = torch.where(live & in_pads, self.n_fed, max_new)
        self.fed[self.slot_index, fed_at] = fed
        self.n_fed += (live & in_pads).long()

        # 5. A row ends at a stop token or at max_new_tokens (its slot is freed at the next look).
        self.steps += live.long()
        self.active = live & ~torch.isin(token, self.stop) & (self.steps < max_new)
        return token, fed, in_pads


def _graph_count() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def engine_for(model, token_ids: LatentTokenIds, latent_size: int, slots: int, compile: bool | None = None,
               check_every: int = CHECK_EVERY) -> Engine:
    """The model's engine with `slots` slots, built on first use and kept (with its compiled step and
    cache) for the model's lifetime, so a run that answers batch after batch compiles once."""
    engines = _ENGINES.setdefault(model, {})
    key = (slots, compile, check_every, latent_size)
    if key not in engines:
        engines[key] = Engine(model, token_ids, latent_size, slots, compile=compile, check_every=check_every)
        if engines[key].compiled:
            engines[key].warm_up()
    return engines[key]
