"""Block-causal diffusion LMs (SDAR, TraDo): attention within a block is bidirectional, across blocks causal.

Blocks are counted from the start of the completion: the completion's first block starts right after
the (left-padded) prompt, and the prompt is cut into blocks backwards from there. The caller passes an
explicit 4D boolean mask (True = visible, SDAR's and LLaDA2's convention; SDAR's code reads any value > 0 as
visible, so an additive 0/-inf mask would hide everything there) and position ids.
"""

from __future__ import annotations

import torch

from ..blocks import block_ids
from .base import DiffusionAdapter, position_ids_from_mask


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean (B, Q, K) -> additive float (B, 1, Q, K), for models that take additive masks; rows never fully masked
    so no NaN appears."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class BlockDiffusionAdapter(DiffusionAdapter):
    name = "sdar"
    model_types = ("sdar", "sdar_moe", "trado")
    block_causal = True
    auto_class = "AutoModelForCausalLM"
    default_mask_token_id = 151669
    mask_token_names = ("<|MASK|>", "<|mask|>", "[MASK]", "<mask>")
    default_block_length = 4

    def block_causal_inputs(
        self,
        input_ids: torch.Tensor,
        key_valid: torch.Tensor,
        prompt_length: int,
        block_length: int,
    ) -> dict:
        """Forward kwargs for `[prompt, completion]` under the block-causal mask."""
        total = input_ids.shape[1]
        blocks = block_ids(prompt_length, total - prompt_length, block_length, input_ids.device)
        allowed = (blocks[None, :] <= blocks[:, None])[None] & key_valid[:, None, :].bool()
        return {
            "input_ids": input_ids,
            "attention_mask": allowed[:, None],
            "position_ids": position_ids_from_mask(key_valid),
            "use_cache": False,
        }

    def forward(self, model, input_ids, attention_mask=None, prompt_length=None, block_length=None):
        """Aligned logits of `[prompt, completion]` under the block-causal mask."""
        if prompt_length is None or block_length is None:
            raise ValueError("Block-causal forwards need `prompt_length` and `block_length`.")
        key_valid = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        out = model(**self.block_causal_inputs(input_ids, key_valid, prompt_length, block_length))
        return self.align_logits(out.logits)

    def completion_logits(
        self, model, prompt_ids, prompt_attention_mask, noisy_completion, clean_completion=None, block_length=None
    ):
        block_length = block_length or self.default_block_length
        prompt_length = prompt_ids.shape[1]
        prompt_valid = (
            prompt_attention_mask.bool()
            if prompt_attention_mask is not None
            else torch.ones_like(prompt_ids, dtype=torch.bool)
        )
        if clean_completion is None:
            input_ids = torch.cat([prompt_ids, noisy_completion], dim=1)
            key_valid = torch.cat([prompt_valid, torch.ones_like(noisy_completion, dtype=torch.bool)], dim=1)
            return self.forward(model, input_ids, key_valid, prompt_length, block_length)[:, prompt_length:]
        return self._train_all_blocks(
            model, prompt_ids, prompt_valid, clean_completion, noisy_completion, block_length
        )

    def _train_all_blocks(self, model, prompt_ids, prompt_valid, clean, noisy, block_length):
        """One forward over `[prompt, x_0, x_t]`: x_t block b sees the prompt, x_0 blocks < b and itself."""
        batch, prompt_length = prompt_ids.shape
        length = clean.shape[1]
        device = prompt_ids.device
        ctx_blocks = block_ids(prompt_length, length, block_length, device)  # prompt + x_0
        noisy_blocks = torch.div(torch.arange(length, device=device), block_length, rounding_mode="floor")
        ctx_ctx = ctx_blocks[None, :] <= ctx_blocks[:, None]
        ctx_noisy = torch.zeros(prompt_length + length, length, dtype=torch.bool, device=device)
        noisy_ctx = ctx_blocks[None, :] < noisy_blocks[:, None]
        noisy_noisy = noisy_blocks[None, :] == noisy_blocks[:, None]
        allowed = torch.cat(
            [torch.cat([ctx_ctx, ctx_noisy], dim=1), torch.cat([noisy_ctx, noisy_noisy], dim=1)], dim=0
        )
        ones = torch.ones(batch, length, dtype=torch.bool, device=device)
        key_valid = torch.cat([prompt_valid, ones, ones], dim=1)
        allowed = allowed[None] & key_valid[:, None, :]
        ctx_positions = position_ids_from_mask(torch.cat([prompt_valid, ones], dim=1))
        positions = torch.cat([ctx_positions, ctx_positions[:, prompt_length:]], dim=1)
        out = model(
            input_ids=torch.cat([prompt_ids, clean, noisy], dim=1),
            attention_mask=allowed[:, None],
            position_ids=positions,
            use_cache=False,
        )
        return self.align_logits(out.logits)[:, prompt_length + length :]

    # ---------------------------------------------------------------- exact KV cache for decoding
    # Finished blocks never see later blocks, so their keys/values are final once the block is decided: decoding
    # keeps them in a cache and runs only the current block. The cache is cropped back after every step, and a
    # finished block is appended during the first forward of the next block (no extra forward pass).
    def init_cache(self, model):
        """An empty `DynamicCache` for `model`."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    def cached_forward(
        self,
        model,
        cache,
        chunk_ids: torch.Tensor,
        key_valid: torch.Tensor,
        prompt_length: int,
        block_length: int,
        keep: int,
    ) -> torch.Tensor:
        """Aligned logits (B, n, V) of `chunk_ids`, the positions right after those in `cache`.

        `key_valid` (B, cache + n) marks the real (non-pad) positions of `[prompt, completion]` up to the chunk's end.
        Afterwards the cache holds only the first `keep` positions of the chunk (the ones that are final).
        """
        if self.logits_shift != 0:
            raise NotImplementedError("The block KV cache assumes unshifted logits.")
        start = _cache_length(cache)
        end = start + chunk_ids.shape[1]
        if key_valid.shape[1] != end:
            raise ValueError(f"`key_valid` covers {key_valid.shape[1]} positions, expected cache + chunk = {end}.")
        key_valid = key_valid.bool()
        blocks = block_ids(prompt_length, end - prompt_length, block_length, chunk_ids.device)
        allowed = (blocks[None, :] <= blocks[start:, None])[None] & key_valid[:, None, :]
        out = model(
            input_ids=chunk_ids,
            attention_mask=allowed[:, None],
            position_ids=position_ids_from_mask(key_valid)[:, start:],
            past_key_values=cache,
            use_cache=True,
        )
        crop_cache(cache, start + keep)
        return self.align_logits(out.logits)

    def prefill(self, model, cache, prompt_ids: torch.Tensor, prompt_attention_mask, block_length: int) -> None:
        """Put the (left-padded) prompt into `cache` (decoding fuses this into the first block's first forward)."""
        valid = prompt_attention_mask if prompt_attention_mask is not None else torch.ones_like(prompt_ids)
        self.cached_forward(model, cache, prompt_ids, valid, prompt_ids.shape[1], block_length, prompt_ids.shape[1])


def _cache_length(cache) -> int:
    return int(cache.get_seq_length()) if cache is not None else 0


def crop_cache(cache, length: int) -> None:
    """Drop cached positions >= `length` (a negative argument means "remove that many" in every transformers)."""
    extra = _cache_length(cache) - length
    if extra > 0:
        cache.crop(-extra)
