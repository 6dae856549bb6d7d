"""States x_t taken from teacher trajectories ("trace" masking) and the collator that batches them.

A trajectory's `step_map` says when the decoder committed each completion token. The decoder's canvas just before
forward pass t has exactly the positions with `step_map >= t` masked, so masking "every position whose step is at
least t" rebuilds a state the decoder actually visited. Inside a training block we pick t so that the r·n tokens of
the block decoded last are still masked (tied steps are kept together, so the state stays a visited one).

- Bidirectional families: one block per example; the whole canvas is the decoder's state (earlier blocks clean,
  later ones masked, the chosen block partially decoded); the loss covers the masked positions of that block.
- Block-causal families: every block at once (the model sees `[prompt, x_0, x_t]`): each block gets its own t.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import blocks as geometry
from ..blocks import ranks_within_blocks
from .randomness import ROUND_KEY, STATE_KEY, derive_seed, keyed_generator


def mask_ratio_probabilities(mask_ratios: Sequence[float], exponent: float) -> torch.Tensor:
    """p(r) ∝ r^exponent (T3D: [1.0, 0.75, 0.5, 0.25] with exponent 8 -> 0.906 / 0.091 / 0.0035 / 0.00001)."""
    ratios = torch.tensor([float(r) for r in mask_ratios], dtype=torch.float64)
    if ratios.numel() == 0 or bool(((ratios <= 0) | (ratios > 1)).any()):
        raise ValueError(f"`mask_ratios` must be a non-empty list of values in (0, 1], got {list(mask_ratios)}.")
    weights = ratios**exponent
    return weights / weights.sum()


def decode_ranks(step_map: torch.Tensor, block_length: int) -> torch.Tensor:
    """Rank of each position inside its block by (step, position): 0 = decoded first. Shape of `step_map`."""
    return ranks_within_blocks(step_map, block_length)


def capped_trailing_eos(
    completion: torch.Tensor | Sequence[int], eos_token_ids: Sequence[int], max_trailing_eos_tokens: int | None
) -> torch.Tensor:
    """Boolean (L,) of the positions no loss should cover: past a completion's first EOS, the EOS/padding tokens
    beyond the first `max_trailing_eos_tokens` of them (T3D's `post_num`). Bidirectional families keep the whole
    canvas, so a 1024-token canvas holding a 300-token answer is mostly such padding. `None` caps nothing."""
    completion = torch.as_tensor(completion, dtype=torch.long)
    if max_trailing_eos_tokens is None or not len(eos_token_ids):
        return torch.zeros(completion.shape, dtype=torch.bool)
    is_eos = torch.isin(completion, torch.as_tensor(list(eos_token_ids), dtype=torch.long))
    trailing = is_eos & (is_eos.long().cumsum(-1) > 1)  # EOS/padding after the first EOS
    return trailing & (trailing.long().cumsum(-1) > max_trailing_eos_tokens)


def sample_trace_state(
    step_map: torch.Tensor | Sequence[int],
    block_length: int,
    ratio: float,
    *,
    all_blocks: bool = False,
    block_index: int | None = None,
    generator: torch.Generator | None = None,
    untrained: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One state x_t of a trajectory: `(noise_mask, loss_mask, decode_rank)`, each of shape (L,).

    `noise_mask` marks the positions that are masked in x_t, `loss_mask` the masked set M the loss covers, and
    `decode_rank` the rank of each position inside its block in decode order (for the path-loss levels).

    In a block of n tokens, the ceil(ratio·n) tokens decoded last (largest `step_map`) are masked, plus any token
    tied with them. With `all_blocks=False` (bidirectional) one block is chosen (uniformly, or `block_index`) and
    the whole completion is set to the decoder's canvas just before that block's threshold step; with
    `all_blocks=True` (block-causal) each block gets its own threshold and the loss covers all blocks.

    `untrained` (L,) marks positions the loss never covers (`capped_trailing_eos`); a block whose masked tokens are
    all such positions is never chosen, so no forward is spent on it.
    """
    step_map = torch.as_tensor(step_map, dtype=torch.long)
    length = step_map.shape[0]
    if length == 0:
        raise ValueError("Cannot build a state from an empty trajectory.")
    if not 0 < ratio <= 1:
        raise ValueError(f"`ratio` must be in (0, 1], got {ratio}.")
    ranks = decode_ranks(step_map, block_length)
    block_of = geometry.block_of(length, block_length)
    num_blocks = geometry.num_blocks(length, block_length)
    sizes = torch.bincount(block_of, minlength=num_blocks)  # (num_blocks,)
    num_masked = torch.tensor([max(1, math.ceil(ratio * int(n) - 1e-9)) for n in sizes])
    # Threshold step of each block: the step of the token whose rank is n - num_masked.
    threshold_rank = sizes - num_masked
    is_threshold = ranks == threshold_rank[block_of]
    thresholds = torch.zeros(num_blocks, dtype=torch.long).scatter_(0, block_of[is_threshold], step_map[is_threshold])
    trained = torch.ones(length, dtype=torch.bool) if untrained is None else ~untrained.bool()
    masked_in_block = step_map >= thresholds[block_of]  # each block's masked set at its own threshold
    if all_blocks:
        return masked_in_block, masked_in_block & trained, ranks
    if block_index is None:
        # Uniform over the blocks with something to train (every block when nothing is untrained).
        useful = (
            torch.zeros(num_blocks, dtype=torch.long).index_add_(0, block_of, (masked_in_block & trained).long()) > 0
        )
        candidates = useful.nonzero().flatten() if bool(useful.any()) else torch.arange(num_blocks)
        block_index = int(candidates[int(torch.randint(candidates.numel(), (1,), generator=generator))])
    if not 0 <= block_index < num_blocks:
        raise ValueError(f"`block_index` {block_index} is outside the {num_blocks} blocks of this trajectory.")
    noise_mask = step_map >= thresholds[block_index]
    loss_mask = noise_mask & (block_of == block_index) & trained
    return noise_mask, loss_mask, ranks


@dataclass
class DDODataCollator:
    """Batches trajectories into `x_t` states for `DDOTrainer`.

    Returns `prompt_ids` / `prompt_attention_mask` (left padded), `x0` (clean completion, right padded with pad),
    `xt` (the state; padding beyond a completion is noise, i.e. still-undecoded canvas), `loss_mask` (the masked set
    M), `decode_rank` (per-block decode order, for path levels), `completion_mask` (real completion positions) and
    `block_length` (B,), and, when every example has one, its `state_key` and `state_round` (B,).

    Args:
        pad_token_id: id used to pad prompts and clean completions.
        mask_token_id: the absorbing-noise token (ignored with `noise="uniform"`).
        block_causal: train every block at once (block-diffusion families) instead of one visited block.
        block_length: training block length; `None` uses each example's decoding `block_length`.
        mask_ratios / mask_ratio_exponent: the ratio r of each example is drawn with p ∝ r^exponent.
        random_token_ratio: share of the masked set (at least one token when > 0) given uniform random tokens.
        vocab_size: range of random tokens (required when `random_token_ratio > 0` or `noise="uniform"`).
        noise: "mask" (absorbing) or "uniform".
        eos_token_ids / max_trailing_eos_tokens: past a completion's first EOS, only the first
            `max_trailing_eos_tokens` EOS/padding tokens (`eos_token_ids` and the pad id) are trained (T3D's
            `post_num`), and a bidirectional block with nothing else to train is never drawn. `None`: no cap.
        seed: seed of the states. An example with a `state_key` (what `DDOTrainer` feeds: see
            `trl_t3d.trainer.randomness`) draws its state from a generator seeded by `(seed, state_key)`, the same in
            any process, worker or batch. Examples without one draw from a stream seeded by `(seed, process rank,
            dataloader worker)`, so ranks and workers never share draws.
    """

    pad_token_id: int
    mask_token_id: int | None = None
    block_causal: bool = False
    block_length: int | None = None
    mask_ratios: Sequence[float] = (1.0, 0.75, 0.5, 0.25)
    mask_ratio_exponent: float = 8.0
    random_token_ratio: float = 0.0
    vocab_size: int | None = None
    noise: str = "mask"
    seed: int = 0
    eos_token_ids: Sequence[int] = ()
    max_trailing_eos_tokens: int | None = None
    generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.noise == "mask" and self.mask_token_id is None:
            raise ValueError("`mask_token_id` is required for absorbing ('mask') noise.")
        if self.noise == "mask" and self.pad_token_id == self.mask_token_id:
            raise ValueError(f"pad_token_id == mask_token_id == {self.pad_token_id}: use a distinct pad token.")
        if not 0 <= self.random_token_ratio <= 1:
            raise ValueError(f"`random_token_ratio` must be in [0, 1], got {self.random_token_ratio}.")
        if self.max_trailing_eos_tokens is not None and self.max_trailing_eos_tokens < 0:
            raise ValueError(f"`max_trailing_eos_tokens` must be >= 0 or None, got {self.max_trailing_eos_tokens}.")
        if (self.random_token_ratio > 0 or self.noise == "uniform") and not self.vocab_size:
            raise ValueError("`vocab_size` is required for random tokens (random_token_ratio > 0 or uniform noise).")
        self.ratio_probs = mask_ratio_probabilities(self.mask_ratios, self.mask_ratio_exponent)

    def _stream(self) -> torch.Generator:
        """The generator of examples without a `state_key`: seeded by (seed, rank, worker), made where it is used."""
        worker = torch.utils.data.get_worker_info()
        owner = (int(os.environ.get("RANK", 0)), worker.id if worker is not None else -1)
        if self.generator is None or getattr(self, "_stream_owner", None) != owner:
            seed = self.seed if owner == (0, -1) else derive_seed(self.seed, "stream", *owner)
            self.generator, self._stream_owner = torch.Generator().manual_seed(seed), owner
        return self.generator

    def _random_tokens(self, count: int, generator: torch.Generator) -> torch.Tensor:
        if self.noise == "mask":  # never draw the mask token itself
            tokens = torch.randint(self.vocab_size - 1, (count,), generator=generator)
            return tokens + (tokens >= self.mask_token_id).long()
        return torch.randint(self.vocab_size, (count,), generator=generator)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        block_lengths = {int(self.block_length or f.get("block_length") or 0) for f in features}
        if 0 in block_lengths:
            raise ValueError("An example has no `block_length`; set `DDOConfig.block_length`.")
        if len(block_lengths) > 1:
            raise ValueError(
                f"Examples of one batch have different block lengths {sorted(block_lengths)}; set `DDOConfig.block_length`."
            )
        block_length = block_lengths.pop()
        batch = len(features)
        prompt_len = max(len(f["prompt_ids"]) for f in features)
        length = max(len(f["completion_ids"]) for f in features)
        prompt_ids = torch.full((batch, prompt_len), self.pad_token_id, dtype=torch.long)
        prompt_attention_mask = torch.zeros((batch, prompt_len), dtype=torch.long)
        x0 = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        noise_mask = torch.ones((batch, length), dtype=torch.bool)  # padding = still-undecoded canvas
        loss_mask = torch.zeros((batch, length), dtype=torch.bool)
        decode_rank = torch.full((batch, length), block_length, dtype=torch.long)
        completion_mask = torch.zeros((batch, length), dtype=torch.long)
        xt = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        for i, feature in enumerate(features):
            prompt = torch.as_tensor(feature["prompt_ids"], dtype=torch.long)
            completion = torch.as_tensor(feature["completion_ids"], dtype=torch.long)
            n = completion.shape[0]
            if prompt.numel():
                prompt_ids[i, prompt_len - prompt.numel() :] = prompt
                prompt_attention_mask[i, prompt_len - prompt.numel() :] = 1
            x0[i, :n] = completion
            completion_mask[i, :n] = 1
            key = feature.get(STATE_KEY)
            generator = self._stream() if key is None else keyed_generator(self.seed, key)
            ratio = float(self.mask_ratios[int(torch.multinomial(self.ratio_probs, 1, generator=generator))])
            untrained = capped_trailing_eos(
                completion, [*self.eos_token_ids, self.pad_token_id], self.max_trailing_eos_tokens
            )
            noise, loss, rank = sample_trace_state(
                feature["step_map"],
                block_length,
                ratio,
                all_blocks=self.block_causal,
                generator=generator,
                untrained=untrained,
            )
            noise_mask[i, :n], loss_mask[i, :n], decode_rank[i, :n] = noise, loss, rank
            # Every draw of example i happens here, in order, and the draws of its padding come last: a batch of 2
            # and two batches of 1 (or batches padded to other lengths) see equal states.
            if self.noise == "mask":
                xt[i] = x0[i].masked_fill(noise_mask[i], self.mask_token_id)
            else:
                xt[i, :n] = torch.where(noise, self._random_tokens(n, generator), completion)
            if self.random_token_ratio > 0:
                candidates = loss.nonzero().flatten()
                count = max(1, int(self.random_token_ratio * candidates.numel()))
                chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
                xt[i, chosen] = self._random_tokens(chosen.numel(), generator)
            if self.noise != "mask" and length > n:
                xt[i, n:] = self._random_tokens(length - n, generator)
        out = {
            "prompt_ids": prompt_ids,
            "prompt_attention_mask": prompt_attention_mask,
            "x0": x0,
            "xt": xt,
            "loss_mask": loss_mask,
            "decode_rank": decode_rank,
            "completion_mask": completion_mask,
            "block_length": torch.full((batch,), block_length, dtype=torch.long),
        }
        # The keys travel with the batch: the trainer draws each example's other randomness (fake tokens, mean-field
        # queries and fill) from them, and rebuilds a batch prefetched before a round swapped its rows.
        for name in (STATE_KEY, ROUND_KEY):
            if all(f.get(name) is not None for f in features):
                out[name] = torch.tensor([int(f[name]) for f in features], dtype=torch.long)
        return out
