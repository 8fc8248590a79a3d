"""The KV cache of latent-aware generation: upstream's `Cache` of `DynamicLayer`s that append in place.

`DynamicLayer.update` appends a step's keys and values with `torch.cat`, which copies the whole
cache at every step: quadratic in the generated length, and on CPU the largest per-step cost
after the vocabulary projection. `GrowingLayer` keeps keys and values in a buffer with spare room
(grown by half its length at a time, never past the longest possible sequence when that is
known) and returns views of its filled part, so a step writes one position and the copies made
when it grows add up to a constant per token. Everything else (masks,
sequence length, `batch_select_indices` for dropping finished rows, `batch_repeat_interleave` for
sharing a prompt's prefill among its samples) behaves as upstream's.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views of a buffer with room to append in place."""

    MIN_ROOM = 256  # positions of spare room added at least, per allocation

    def __init__(self, max_length: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length  # longest sequence the layer can see (0: unknown); caps the buffer
        self._keys_buffer = self._values_buffer = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # Parent: torch.cat onto the stored tensors (a full copy per call). Ours: write into spare room.
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        needed = self._length + key_states.shape[-2]
        if self._keys_buffer is None or needed > self._keys_buffer.shape[-2]:
            capacity = needed + max(needed // 2, self.MIN_ROOM)
            if self.max_length >= needed:
                capacity = min(capacity, self.max_length)
            self._keys_buffer = self._grow(self._keys_buffer, key_states, capacity)
            self._values_buffer = self._grow(self._values_buffer, value_states, capacity)
        self._keys_buffer[..., self._length:needed, :] = key_states
        self._values_buffer[..., self._length:needed, :] = value_states
        self._length = needed
        self._refresh_views()
        return self.keys, self.values

    def _grow(self, buffer: torch.Tensor | None, states: torch.Tensor, capacity: int) -> torch.Tensor:
        grown = states.new_empty((*states.shape[:-2], capacity, states.shape[-1]))
        if buffer is not None:
            grown[..., :self._length, :] = buffer[..., :self._length, :]
        return grown

    def _refresh_views(self) -> None:
        self.keys = self._keys_buffer[..., :self._length, :]
        self.values = self._values_buffer[..., :self._length, :]

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # validates the argument and crops the views
        if self.is_initialized and self._keys_buffer is not None:
            self._length = self.keys.shape[-2]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # Parent: index the stored tensors (dropping spare room). Ours: index the buffers, keeping it.
        if self._keys_buffer is not None and self._length:
            self._keys_buffer = self._keys_buffer[indices]
            self._values_buffer = self._values_buffer[indices]
            self._refresh_views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        # Parent: repeat the stored tensors. Ours: repeat the buffers (spare room included) and re-view them.
        if self._keys_buffer is not None and self._length:
            self._keys_buffer = self._keys_buffer.repeat_interleave(repeats, dim=0)
            self._values_buffer = self._values_buffer.repeat_interleave(repeats, dim=0)
            self._refresh_views()

    def reset(self) -> None:
        super().reset()
        self._keys_buffer = self._values_buffer = None
        self._length = 0


def growing_cache(config, max_length: int = 0) -> Cache:
    """A cache for `config`'s decoder whose layers append in place; `max_length` (e.g. prompt
    length + max_new_tokens) keeps the buffers from growing past what can be used."""
    n_layers = config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[GrowingLayer(max_length=max_length) for _ in range(n_layers)])
