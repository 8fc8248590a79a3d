"""The sampling rules (dift.core.sampling): repetition penalty, top-k, and the sort-free top-p draw,
checked against a sort-based reference written longhand here."""

from __future__ import annotations

import math

import pytest
import torch

from dift.core.sampling import (
    NUCLEUS_CANDIDATES,
    apply_repetition_penalty,
    filter_top_k,
    nucleus_threshold,
    sample_from_scores,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.one_torch_thread

VOCAB = 3000  # > NUCLEUS_CANDIDATES: rows whose nucleus is not among the top candidates take the histograms


# ---------------------------------------------------------------------------------------------
# The reference: sort, keep the prefix, invert the CDF


def sorted_prefix(probs: torch.Tensor, top_p: float) -> set[int]:
    """The smallest set of most likely tokens whose mass (float64) reaches top_p, by a stable sort."""
    values, order = torch.sort(probs.double(), descending=True, stable=True)
    before = torch.cat([values.new_zeros(1), values.cumsum(0)[:-1]])
    return set(order[before < top_p].tolist())


def reference_nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    """Our rule: the sorted prefix plus every token tied with its least likely token."""
    prefix = sorted_prefix(probs, top_p)
    smallest = min(probs[i].item() for i in prefix)
    return prefix | set((probs == smallest).nonzero()[:, 0].tolist())


def reference_draw(probs: torch.Tensor, u: float, top_p: float) -> int:
    """Inverse CDF in vocabulary order over the nucleus (cumulative sums as the sampler's: float32)."""
    kept = torch.zeros_like(probs)
    nucleus = sorted(reference_nucleus(probs, top_p))
    kept[nucleus] = probs[nucleus]
    cdf = kept.cumsum(0)
    target = torch.tensor(u).to(cdf) * cdf[-1]
    return next((i for i in nucleus if cdf[i] > target), nucleus[-1])


def sorted_draw(probs: torch.Tensor, u: float, top_p: float) -> int:
    """The rule before the sort-free sampler: inverse CDF in descending probability order."""
    values, order = torch.sort(probs.double(), descending=True, stable=True)
    kept = [(i, v) for i, v in zip(order.tolist(), values.tolist()) if i in sorted_prefix(probs, top_p)]
    target, acc = u * sum(v for _, v in kept), 0.0
    for i, v in kept:
        acc += v
        if acc > target:
            return i
    return kept[-1][0]


def rows_of(*rows: torch.Tensor) -> torch.Tensor:
    return torch.stack(rows).float()


def random_rows(vocab: int, seed: int = 0) -> torch.Tensor:
    """Peaked (nucleus of a few dozen: the top candidates hold it), flat (thousands: they do not),
    tied (groups of equal logits) and a top-k-filtered flat row (-inf scores)."""
    gen = torch.Generator().manual_seed(seed)
    peaked = torch.randn(vocab, generator=gen) * 4
    flat = torch.randn(vocab, generator=gen) * 0.1
    tied = torch.randint(0, 5, (vocab,), generator=gen).float() * 0.01
    filtered = filter_top_k((torch.randn(vocab, generator=gen) * 0.1)[None], vocab * 2 // 3)[0]
    return rows_of(peaked, flat, tied, filtered)


def chi2_critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at the normal quantile z (3.09: p = 0.999), by Wilson-Hilferty."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


# ---------------------------------------------------------------------------------------------
# The nucleus


@pytest.mark.parametrize("top_p", [0.001, 0.3, 0.75, 0.9, 0.95, 0.999])
def test_nucleus_is_the_sorted_prefix_plus_ties(top_p):
    scores = random_rows(VOCAB)
    probs = torch.softmax(scores, dim=-1)
    threshold = nucleus_threshold(probs, top_p)
    for row in range(len(probs)):
        ours = set((probs[row] >= threshold[row]).nonzero()[:, 0].tolist())
        assert ours == reference_nucleus(probs[row], top_p)
        if row < 2 and len(set(probs[row].tolist())) == VOCAB:  # no ties: exactly the sorted prefix
            assert ours == sorted_prefix(probs[row], top_p)


def test_nucleus_at_the_real_vocabulary_size():
    """151,936 tokens (Qwen2.5-VL's): probabilities of ~1e-5 and float32 ties by chance."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 151936, generator=gen) * torch.tensor([[0.5], [2.0], [8.0]])
    probs = torch.softmax(scores, dim=-1)
    threshold = nucleus_threshold(probs, 0.9)
    for row in range(3):
        assert set((probs[row] >= threshold[row]).nonzero()[:, 0].tolist()) == reference_nucleus(probs[row], 0.9)


def test_ties_at_the_threshold_are_all_kept():
    probs = torch.tensor([0.3, 0.2, 0.2, 0.2, 0.1])
    assert len(sorted_prefix(probs, 0.4)) == 2  # the prefix takes one of the three 0.2s
    assert reference_nucleus(probs, 0.4) == {0, 1, 2, 3}
    draws = sample_from_scores(torch.log(probs).expand(400, -1), torch.rand(400, generator=torch.Generator().manual_seed(0)), 0.4)
    assert set(draws.tolist()) == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------
# The draw


def test_draws_match_the_reference_on_both_paths():
    """Peaked rows take the top candidates, flat ones the histograms: the same rule either way."""
    scores = random_rows(VOCAB)
    probs = torch.softmax(scores, dim=-1)
    top_mass = probs.topk(NUCLEUS_CANDIDATES, dim=-1).values.double().sum(dim=-1)
    assert top_mass[0] >= 0.9 > top_mass[1]  # row 0 takes the candidates, row 1 the histograms
    for u in torch.rand(30, generator=torch.Generator().manual_seed(2)).tolist():
        tokens = sample_from_scores(scores, torch.full((len(scores),), u), 0.9).tolist()
        assert tokens == [reference_draw(probs[row], u, 0.9) for row in range(len(scores))]


def test_a_row_depends_on_its_own_scores_and_uniform_only():
    """Batched (rows of both paths mixed, more rows than a CPU chunk) == each row alone."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.cat([random_rows(VOCAB, seed) for seed in range(3)])[torch.randperm(12, generator=gen)]
    uniforms = torch.rand(12, generator=gen)
    batched = sample_from_scores(scores, uniforms, 0.9).tolist()
    alone = [sample_from_scores(scores[i:i + 1], uniforms[i:i + 1], 0.9).item() for i in range(12)]
    assert batched == alone


def test_a_row_of_nan_scores_does_not_stop_the_batch():
    scores = random_rows(VOCAB)
    scores[1] = float("nan")
    uniforms = torch.full((4,), 0.5)
    tokens = sample_from_scores(scores, uniforms, 0.9)
    assert 0 <= tokens[1] < VOCAB
    assert tokens[[0, 2, 3]].tolist() == sample_from_scores(scores[[0, 2, 3]], uniforms[:3], 0.9).tolist()
    probs = torch.softmax(random_rows(VOCAB), dim=-1)
    probs[1, ::2], probs[2, ::3] = float("nan"), -float("nan")  # either sign bit: bins of the row's own
    threshold = nucleus_threshold(probs, 0.9)
    assert threshold[[0, 3]].tolist() == nucleus_threshold(probs[[0, 3]], 0.9).tolist()


def test_a_one_token_nucleus_draws_as_the_sorted_rule():
    """Where the mapping cannot differ (the nucleus is the most likely token), the old rule's token."""
    scores = random_rows(VOCAB)[:1]
    probs = torch.softmax(scores, dim=-1)[0]
    assert len(sorted_prefix(probs, 0.001)) == 1
    for u in (0.0, 0.3, 0.999):
        token = sample_from_scores(scores, torch.tensor([u]), 0.001).item()
        assert token == sorted_draw(probs, u, 0.001) == probs.argmax().item()


@pytest.mark.parametrize("case", ["flat", "peaked", "ties", "wide"])
def test_frequencies_match_the_nucleus_probabilities(case):
    """Many uniforms in one batched call on a repeated row: chi-square of the counts against the
    nucleus probabilities, at p = 0.001. `wide` (3,000 tokens, ~2,700 kept) takes the histograms;
    its counts are pooled into 30 groups of tokens."""
    gen = torch.Generator().manual_seed(4)
    top_p, draws = 0.85, 20000
    if case == "flat":  # every token tied: all kept
        scores = torch.zeros(20)
    elif case == "peaked":
        scores = torch.log(torch.tensor([0.6, 0.2, 0.1, 0.05, 0.03, 0.02]))
    elif case == "ties":
        scores = torch.log(torch.tensor([0.3, 0.2, 0.2, 0.2, 0.1]))
        top_p = 0.4
    else:
        scores, draws = torch.randn(VOCAB, generator=gen) * 0.1, 4000
    probs = torch.softmax(scores, dim=-1)
    nucleus = sorted(reference_nucleus(probs, top_p))
    tokens = sample_from_scores(scores.expand(draws, -1), torch.rand(draws, generator=gen), top_p)
    assert set(tokens.tolist()) <= set(nucleus)
    counts = torch.bincount(tokens, minlength=len(probs)).double()[nucleus]
    expected = probs.double()[nucleus] / probs.double()[nucleus].sum() * draws
    if case == "wide":
        groups = torch.arange(len(nucleus)) * 30 // len(nucleus)
        counts = torch.zeros(30, dtype=torch.float64).index_add_(0, groups, counts)
        expected = torch.zeros(30, dtype=torch.float64).index_add_(0, groups, expected)
    statistic = ((counts - expected) ** 2 / expected).sum().item()
    assert statistic < chi2_critical(len(counts) - 1), (statistic, len(counts))


def test_top_p_one_is_the_plain_inverse_cdf():
    """top_p 1: the whole vocabulary in vocabulary order, unchanged by the sort-free sampler."""
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    torch.testing.assert_close(sample_from_scores(scores, torch.tensor([0.0, 0.0]), 1.0), torch.tensor([0, 0]))
    torch.testing.assert_close(sample_from_scores(scores, torch.tensor([0.999, 0.999]), 1.0), torch.tensor([3, 3]))
    torch.testing.assert_close(sample_from_scores(scores, torch.tensor([0.55, 0.55]), 1.0), torch.tensor([1, 2]))
    wide = random_rows(VOCAB)
    for u in (0.1, 0.5, 0.9):
        cdf = torch.softmax(wide, dim=-1).cumsum(dim=-1)
        expected = (cdf <= u * cdf[:, -1:]).sum(dim=-1)
        assert sample_from_scores(wide, torch.full((4,), u), 1.0).tolist() == expected.tolist()


def test_small_nucleus_examples():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    # Nucleus 0.75: row 0 keeps {0, 1} (mass 0.8), row 1 keeps {3, 2} (0.7) + 1 (0.9).
    for u in torch.linspace(0, 0.999, 50):
        token = sample_from_scores(scores, torch.tensor([u, u]), top_p=0.75)
        assert token[0] in (0, 1) and token[1] in (1, 2, 3)
    # In vocabulary order: u = 0 gives each nucleus's lowest id (row 1: token 1, not the likeliest 3).
    torch.testing.assert_close(sample_from_scores(scores, torch.tensor([0.0, 0.0]), 0.75), torch.tensor([0, 1]))
    torch.testing.assert_close(sample_from_scores(scores, torch.tensor([0.999, 0.999]), 0.75), torch.tensor([1, 3]))


def test_top_k_and_repetition_penalty():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    assert torch.isinf(filter_top_k(scores, 2)).sum(dim=-1).tolist() == [2, 2]
    assert filter_top_k(scores, 0) is scores and filter_top_k(scores, 4) is scores
    tied = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert torch.isinf(filter_top_k(tied, 1)).tolist() == [[True, False, False, True]]  # ties with the k-th kept
    seen = torch.tensor([[True, True, False]])
    torch.testing.assert_close(apply_repetition_penalty(torch.tensor([[2.0, -2.0, 1.0]]), seen, 2.0),
                               torch.tensor([[1.0, -4.0, 1.0]]))
