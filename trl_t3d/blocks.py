"""Block geometry of semi-autoregressive decoding: which block a position is in, where blocks start and end, and
the rank of a position inside its block.

Blocks are counted from the start of the completion (block 0 starts right after the prompt); a completion whose
length is not a multiple of `block_length` ends with a shorter block. The decoder, the block-causal attention masks,
the collator's trace masking, the loss terms and the Monte-Carlo likelihood all read blocks from here, so they cannot
disagree on where a block ends. Pure tensor functions at the bottom floor (imported by adapters, losses, generation).
"""

from __future__ import annotations

import torch


def num_blocks(length: int, block_length: int) -> int:
    """How many blocks `length` positions take (the last one may be shorter)."""
    return -(-int(length) // int(block_length))


def block_of(length: int, block_length: int, device=None, *, offset: int = 0) -> torch.Tensor:
    """(length,) block index of positions `0 .. length - 1` whose block 0 starts at position `offset` (positions before
    it get negative blocks: a prompt cut into blocks backwards from the completion)."""
    positions = torch.arange(length, device=device) - offset
    return torch.div(positions, block_length, rounding_mode="floor")


def block_ids(prompt_length: int, completion_length: int, block_length: int, device=None) -> torch.Tensor:
    """Block index of every position of `[prompt, completion]`; the completion starts block 0."""
    return block_of(prompt_length + completion_length, block_length, device, offset=prompt_length)


def block_spans(length: int, block_length: int | None) -> list[tuple[int, int]]:
    """(start, end) of each block of a continuation of `length` tokens; one block when `block_length` is None."""
    if block_length is None:
        return [(0, length)]
    if block_length < 1:
        raise ValueError(f"`block_length` must be a positive int or None, got {block_length}.")
    return [(start, min(start + block_length, length)) for start in range(0, length, block_length)]


def ranks_within_blocks(keys: torch.Tensor, block_length: int) -> torch.Tensor:
    """Rank of each position inside its block of `block_length` by (key, position), 0 = smallest, over the last dim
    of `keys` (..., L); a last block shorter than `block_length` ranks its own positions only."""
    length = keys.shape[-1]
    blocks = num_blocks(length, block_length)
    fill = torch.finfo(keys.dtype).max if keys.is_floating_point() else torch.iinfo(keys.dtype).max
    padded = torch.full((*keys.shape[:-1], blocks * block_length), fill, dtype=keys.dtype, device=keys.device)
    padded[..., :length] = keys
    order = torch.argsort(padded.view(*keys.shape[:-1], blocks, block_length), dim=-1, stable=True)
    positions = torch.arange(block_length, device=keys.device).expand_as(order).contiguous()
    return torch.empty_like(order).scatter_(-1, order, positions).flatten(-2)[..., :length]
