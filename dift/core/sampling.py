"""The sampling rules of the generation loop: repetition penalty, top-k, and one top-p draw per row
from a pre-drawn uniform. Pure tensor functions; `dift.core.generation` applies them in this order:
penalty, temperature, top-k, top-p.

The nucleus (top-p) of a row is every token whose probability is at least the row's threshold t,
the probability of the least likely token of the smallest set of most likely tokens whose mass
reaches top_p; equivalently, t is the largest probability v with mass(p >= v) >= top_p. Masses are
float64 sums of the float32 probabilities (summation order may move the boundary by a token only
when a mass lies within ~1e-16 of top_p). Tokens tied with t are all kept, where a sorted prefix
keeps whichever of them the sort puts first: the nucleus depends on the probabilities alone.

The draw is by inverse CDF in vocabulary order: the first token id whose running kept probability
(float32, from id 0) exceeds u * the nucleus mass. With top_p = 1 that is the whole vocabulary, the
rule the loop always had. (Upstream's TopPLogitsWarper sorts and draws in probability order: the
same distribution, another token for a given u.)

No sort of the vocabulary: a trained model's nucleus usually lies among the top NUCLEUS_CANDIDATES
tokens (a partial selection finds t there); otherwise t comes from a radix select on the float bits
(non-negative floats order as their bit patterns): a per-row histogram of mass over the high bits
finds the bin holding t, a second over the low bits of that bin's tokens finds t exactly. Two
passes over the vocabulary where the old sampler sorted all 151,936 entries of every row
(`python scripts/bench_generate.py --sections sampler`).
"""

from __future__ import annotations

import torch

NUCLEUS_CANDIDATES = 1024  # top-p looks for the nucleus among this many most likely tokens first
LOW_BITS = 16  # the second histogram resolves the low 16 bits of float32; the first the 15 above
ONE_HIGH = 0x3F80  # the high field of 1.0: probabilities in [0, 1] have 0x3F80 + 1 high fields
CPU_ROWS_PER_CHUNK = 2  # on CPU, rows are processed 2 at a time: (2, vocabulary) temporaries stay in
# cache and below glibc's mmap threshold (no fresh pages to fault in at every operation). At 64 x 151,936
# on one thread, whole-batch operations were 3x slower, chunks of 4 or 8 rows 10-30% slower (and chunks
# of 4 erratic, with the allocator's state). On an accelerator the whole batch at once.


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: seen tokens' positive logits divided, negative multiplied."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def filter_top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Scores below each row's k-th largest set to -inf (ties with the k-th kept); top_k 0 = off."""
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def _where_true(compare, a: torch.Tensor, b: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`values` where compare(a, b), else 0. The comparison writes its 0/1 straight into a float
    tensor that then multiplies: exact, and ~4x faster on CPU than masked_fill, torch.where or a
    product with a bool mask (each converts or copies the mask first)."""
    mask = torch.empty_like(values)
    return compare(a, b, out=mask).mul_(values)


def _first_bin_reaching(index: torch.Tensor, weights: torch.Tensor, n_bins: int, top_p: float,
                        base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first bin at which `base` + the running weight of bins 0, 1, ... reaches top_p
    (the last bin if none does), and that running weight before it. `index` (rows, V) int32: row r's
    bin b is r * n_bins + b, bin 0 the most likely values; `weights` (rows, V) float64; `base` (rows,)."""
    rows = len(index)
    hist = torch.zeros(rows * n_bins, dtype=torch.float64, device=index.device)
    hist.index_add_(0, index.view(-1), weights.view(-1))
    running = hist.view(rows, n_bins).cumsum(dim=-1) + base[:, None]  # non-decreasing, even rounded
    first = (running < top_p).sum(dim=-1).clamp_(max=n_bins - 1)
    before = running.gather(-1, (first - 1).clamp(min=0)[:, None])[:, 0]
    return first, torch.where(first > 0, before, base)


def nucleus_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Each row's nucleus threshold (B,) float32: the largest value v among its probabilities (B, V)
    float32 in [0, 1] with mass(probs >= v) >= top_p (0 if the whole row sums below top_p in float64).

    Radix select on the float bits (see the module docstring); no sort, no host synchronisation.
    """
    # For non-negative floats the order of the bits as integers is the order of the values: bins
    # numbered down from the most likely are 1.0's high field - the high field, and 0xFFFF - the low.
    keys = probs.contiguous().view(torch.int32)
    n_low, n_high = 1 << LOW_BITS, ONE_HIGH + 1
    row = torch.arange(len(probs), dtype=torch.int32, device=probs.device)[:, None]
    # 1. The bin of the high bits that holds the threshold: the first whose running mass reaches top_p.
    # (Clamped: NaN, from NaN scores, stays in its row's bins.)
    high_index = (row * n_high + ONE_HIGH) - (keys >> LOW_BITS).clamp_(0, ONE_HIGH)
    no_mass = probs.new_zeros(len(probs), dtype=torch.float64)
    high, above = _first_bin_reaching(high_index, probs.double(), n_high, top_p, no_mass)
    # 2. Within that bin the same on the low bits, counting the mass of the bins before it.
    in_bin = _where_true(torch.eq, high_index, row * n_high + high[:, None].to(row.dtype), probs)
    low_index = (row * n_low + n_low - 1) - (keys & (n_low - 1))
    low, _ = _first_bin_reaching(low_index, in_bin.double(), n_low, top_p, above)
    # (If rounding puts the bin's own total below top_p, `low` is its last bin: the whole bin is kept.)
    key = ((ONE_HIGH - high) << LOW_BITS) | (n_low - 1 - low)
    return key.to(torch.int32).view(torch.float32)


def _inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose cumulative weight (in index order) exceeds u * total."""
    cdf = weights.cumsum(dim=-1)
    target = uniforms.to(cdf) * cdf[:, -1]
    return torch.searchsorted(cdf, target[:, None], right=True).clamp_(max=cdf.shape[-1] - 1)[:, 0]


def _draw_from_candidates(top: torch.Tensor, order: torch.Tensor, threshold: torch.Tensor,
                          uniforms: torch.Tensor) -> torch.Tensor:
    """The vocabulary-order draw among candidates that hold the whole nucleus: their kept
    probabilities in vocabulary order give the cumulative sums of the whole row (zeros add nothing)."""
    ids, position = order.sort(dim=-1)
    kept = top.gather(-1, position)
    kept = _where_true(torch.ge, kept, threshold[:, None], kept)
    return ids.gather(-1, _inverse_cdf(kept, uniforms)[:, None])[:, 0]


def _sample_nucleus(scores: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    """`sample_from_scores` for top_p < 1 on a chunk of rows."""
    probs = torch.softmax(scores.float(), dim=-1)
    n_candidates = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    from_candidates = None
    # A trained model's nucleus is usually small: when the top candidates (a partial selection, cheaper
    # than the histograms) hold all of a row's nucleus, its threshold and draw come from them. Skipped
    # when no row can be covered: candidates hold at most n_candidates x the largest probability.
    # CPU only: both paths draw the same token, and on an accelerator the histograms are cheap while
    # the two checks below would stop the host every step (the engine's decode runs ahead of it).
    if probs.device.type == "cpu" and bool((probs.amax(dim=-1) * n_candidates >= top_p).any()):
        top, order = probs.topk(n_candidates, dim=-1)
        # The first candidate at which the running mass reaches top_p is the threshold.
        first = (top.double().cumsum(dim=-1) < top_p).sum(-1, keepdim=True).clamp_(max=n_candidates - 1)
        threshold = top.gather(-1, first)[:, 0]
        # Covered: the least likely candidate is below the threshold, so no token tied with it is left out.
        covered = (top[:, -1] < threshold) | (n_candidates == probs.shape[-1])
        from_candidates = _draw_from_candidates(top, order, threshold, uniforms)
        if bool(covered.all()):
            return from_candidates
    kept = _where_true(torch.ge, probs, nucleus_threshold(probs, top_p)[:, None], probs)
    tokens = _inverse_cdf(kept, uniforms)
    return tokens if from_candidates is None else torch.where(covered, from_candidates, tokens)


def sample_from_scores(scores: torch.Tensor, uniforms: torch.Tensor, top_p: float = 1.0) -> torch.Tensor:
    """One token per row (B,) from softmax(scores) restricted to the top-p nucleus, by inverse CDF in
    vocabulary order (module docstring).

    `uniforms` (B,) in [0, 1) are drawn from each row's own generator, and a row's token depends on
    its own scores and uniform alone, so this batched draw picks exactly the token a one-row call would.
    """
    if top_p >= 1.0:
        return _inverse_cdf(torch.softmax(scores.float(), dim=-1), uniforms)
    chunk = CPU_ROWS_PER_CHUNK if scores.device.type == "cpu" else max(len(scores), 1)
    return torch.cat([_sample_nucleus(scores[start:start + chunk], uniforms[start:start + chunk], top_p)
                      for start in range(0, len(scores), chunk)] or [uniforms.new_zeros(0, dtype=torch.long)])
