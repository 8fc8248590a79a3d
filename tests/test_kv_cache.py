"""dift.core.kv_cache.GrowingLayer: the same keys, values and sizes as upstream's DynamicLayer, appended in place."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from dift.core.kv_cache import GrowingLayer


def assert_same(ours: GrowingLayer, upstream: DynamicLayer):
    assert ours.get_seq_length() == upstream.get_seq_length()
    assert ours.get_mask_sizes(1) == upstream.get_mask_sizes(1)
    assert torch.equal(ours.keys, upstream.keys) and torch.equal(ours.values, upstream.values)


def test_growing_layer_equals_dynamic_layer():
    gen = torch.Generator().manual_seed(0)
    ours, upstream = GrowingLayer(max_length=5 + 400), DynamicLayer()
    prefill = [torch.randn(4, 2, 5, 8, generator=gen) for _ in range(2)]
    for layer in (ours, upstream):
        layer.update(*prefill)
    assert_same(ours, upstream)
    capacity = ours._keys_buffer.shape[-2]
    assert capacity == 5 + GrowingLayer.MIN_ROOM
    rows = 4
    for step in range(300):  # past the first allocation: the buffer grows once, capped at max_length
        k, v = torch.randn(rows, 2, 1, 8, generator=gen), torch.randn(rows, 2, 1, 8, generator=gen)
        returned = ours.update(k, v)
        upstream.update(k, v)
        assert torch.equal(returned[0], upstream.keys)
        if step == 100:  # finished rows dropped mid-generation
            keep = torch.tensor([0, 2, 3])
            ours.batch_select_indices(keep)
            upstream.batch_select_indices(keep)
            rows = 3
        assert_same(ours, upstream)
    assert ours._keys_buffer.shape[-2] == 5 + 400  # grown once, to the cap (not to 1.5 x 262)
    ours.crop(-3)
    upstream.crop(-3)
    assert_same(ours, upstream)
    k = torch.randn(3, 2, 1, 8, generator=gen)
    ours.update(k, k)
    upstream.update(k, k)
    assert_same(ours, upstream)


def test_growing_layer_repeats_rows_as_dynamic_layer():
    """Shared-prefix rollouts: a prompt's cache repeated to its G sampling rows, then appended to."""
    gen = torch.Generator().manual_seed(1)
    ours, upstream = GrowingLayer(max_length=50), DynamicLayer()
    prefill = [torch.randn(2, 2, 6, 8, generator=gen) for _ in range(2)]
    for layer in (ours, upstream):
        layer.update(*prefill)
        layer.batch_repeat_interleave(3)
    assert_same(ours, upstream)
    assert ours.keys.shape[0] == 6 and torch.equal(ours.keys[1], prefill[0][0]) and torch.equal(ours.keys[3], prefill[0][1])
    k = torch.randn(6, 2, 1, 8, generator=gen)
    ours.update(k, k)
    upstream.update(k, k)
    assert_same(ours, upstream)
