"""Approximate KV caches for bidirectional diffusion LMs (Fast-dLLM's prefix and dual cache) as a transformers Cache.

In a bidirectional model every position's keys and values depend on the whole sequence, so no cache is exact. Fast-dLLM
(arXiv 2505.22618) observes that they change little while one block is decoded: the first forward pass of a block runs
the whole sequence and fills the cache; the block's later steps reuse it.

- prefix: later steps run the block and everything after it; keys/values before the block come from the cache.
- dual: later steps run the block only; keys/values before *and after* it come from the cache, and the block's fresh
  keys/values are written in place.

`DiffusionKVCache` is a `DynamicCache` whose `update` does either, for the query window set by `set_window`; it reports
the window's start as its length, so models that derive positions from the cache (`cache.get_seq_length()`) place the
window where it belongs, and the full sequence as the key length of attention masks.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class DiffusionKVCache(DynamicCache):
    """Keys/values of a whole `[prompt, canvas]` sequence, refreshed once per block, reused by the block's later steps.

    Args:
        mode (`str`): `"prefix"` or `"dual"` (see the module docstring).
    """

    def __init__(self, mode: str):
        if mode not in ("prefix", "dual"):
            raise ValueError(f"`mode` must be 'prefix' or 'dual', got {mode!r}.")
        super().__init__()
        self.mode = mode
        self.window: tuple[int, int] | None = None  # query positions [start, end) of the next forward; None: refill
        self.total_length = 0  # length of the sequence the cache describes

    def set_window(self, start: int, end: int) -> None:
        """The next forward's queries are positions [start, end) of the cached sequence (prefix: end = its length)."""
        if not self.layers:
            raise RuntimeError("The cache is empty: run the whole sequence once (window None) before a window.")
        if not 0 <= start < end <= self.total_length:
            raise ValueError(
                f"Window [{start}, {end}) is outside the cached sequence of {self.total_length} positions."
            )
        if self.mode == "prefix" and end != self.total_length:
            raise ValueError("A prefix-cache window runs to the end of the sequence.")
        self.window = (start, end)

    # ------------------------------------------------------------------------------------- Cache API
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.window is None:  # the block's first forward: the whole sequence
            keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
            self.total_length = keys.shape[-2]
            return keys, values
        start, end = self.window
        if key_states.shape[-2] != end - start:
            raise ValueError(
                f"The forward fed {key_states.shape[-2]} positions, but the cache window is [{start}, {end})."
            )
        layer = self.layers[layer_idx]
        if self.mode == "prefix":
            return (
                torch.cat([layer.keys[..., :start, :], key_states], dim=-2),
                torch.cat([layer.values[..., :start, :], value_states], dim=-2),
            )
        layer.keys[..., start:end, :] = key_states
        layer.values[..., start:end, :] = value_states
        return layer.keys, layer.values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions before the current window (models place the window's first query here)."""
        if self.window is not None:
            return self.window[0]
        return super().get_seq_length(layer_idx)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """(key length, key offset) of attention: the whole sequence once it is cached."""
        if self.window is not None:
            return self.total_length, 0
        return query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length(layer_idx)
