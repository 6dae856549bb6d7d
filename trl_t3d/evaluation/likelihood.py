"""Log-likelihood of a continuation under a masked diffusion LM: the Monte-Carlo bound LLaDA's evaluation uses.

A masked diffusion LM has no exact `log p(y | c)`. LLaDA (arXiv 2502.09992, Eq. 6, after SMDM) scores the lower bound

    log p(y | c) >= E_{l ~ U{1..L}} E_{S ~ U(l-subsets of y)} [ (L / l) * sum_{i in S} log p(y_i | c, y with S masked) ]

and estimates it by Monte Carlo: each sample draws a mask count l and a uniformly random set S of l continuation
positions, and one forward pass scores the masked positions. Inside a batch the counts are spread evenly over 1..L
(less variance than independent draws) while each sample's count stays exactly uniform, so the estimate is unbiased.

Block-causal families (SDAR, TraDo: adapter `block_causal`) factor over blocks of the continuation (blocks counted
from its start, as in decoding): block b is masked while the blocks before it stay clean, and the bound is the sum
over blocks of each block's bound. One forward over the adapter's training layout `[c, y, y_t]` scores every block of
a sample at once, each block with its own count and subset.
"""

from __future__ import annotations

import torch

from ..blocks import block_spans


def stratified_mask_counts(num_samples: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`num_samples` mask counts in 1..`length`, spread evenly from one random offset (each one uniform on 1..L)."""
    if num_samples < 1 or length < 1:
        raise ValueError(f"Need num_samples >= 1 and length >= 1, got {num_samples}, {length}.")
    offset = torch.randint(length, (1,), generator=generator)
    return (offset + torch.arange(num_samples) * length // num_samples) % length + 1


def random_subset_masks(counts: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean (n, length): row i masks `counts[i]` positions drawn uniformly without replacement."""
    ranks = torch.rand(counts.shape[0], length, generator=generator).argsort(-1).argsort(-1)
    return ranks < counts[:, None]


def sample_mask_states(
    num_samples: int, length: int, block_length: int | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks and weights of `num_samples` Monte-Carlo samples of the bound.

    Returns `(mask, weight)`, both (num_samples, length): inside every block each row masks a uniform count l_b of
    the block's n_b positions (a uniform subset), and `weight` is n_b / l_b at the masked positions, 0 elsewhere.
    A sample's estimate is `(weight * log p(y_i | state)).sum()`.
    """
    mask = torch.zeros(num_samples, length, dtype=torch.bool)
    weight = torch.zeros(num_samples, length, dtype=torch.float64)
    for start, end in block_spans(length, block_length):
        size = end - start
        counts = stratified_mask_counts(num_samples, size, generator)
        block_mask = random_subset_masks(counts, size, generator)
        mask[:, start:end] = block_mask
        weight[:, start:end] = block_mask * (size / counts.double())[:, None]
    return mask, weight


@torch.no_grad()
def masked_loglikelihood(
    model,
    adapter,
    context_ids: list[int],
    continuation_ids: list[int],
    *,
    num_samples: int = 128,
    batch_size: int = 32,
    block_length: int | None = None,
    generator: torch.Generator | None = None,
    return_samples: bool = False,
):
    """Monte-Carlo estimate of the masked-diffusion bound on `log p(continuation | context)` (see the module doc).

    Args:
        model: a diffusion LM of an absorbing-mask family (`adapter.noise == "mask"`).
        adapter: its `DiffusionAdapter` (mask id, forward layout, logit alignment).
        context_ids, continuation_ids: token ids; the context is never masked.
        num_samples: Monte-Carlo samples (LLaDA uses 128); `batch_size` of them share a forward pass.
        block_length: block size of a block-causal family (`adapter.block_causal`); ignored for bidirectional ones.
        generator: CPU generator of the mask draws (the estimate is reproducible given its seed).
        return_samples: also return the per-sample estimates (float64, shape (num_samples,)).

    Returns:
        The estimate (a float), or `(estimate, samples)` with `return_samples=True`.
    """
    if adapter.noise != "mask":
        raise ValueError(
            f"The '{adapter.name}' family denoises uniform random tokens, not a mask token, so the masked "
            "log-likelihood bound does not apply to it. Evaluate it on generation tasks (generate_until) instead."
        )
    if not continuation_ids:
        raise ValueError("The continuation is empty: there is nothing to score.")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"`num_samples` and `batch_size` must be >= 1, got {num_samples}, {batch_size}.")
    device = next(model.parameters()).device
    length = len(continuation_ids)
    blocks = block_length if adapter.block_causal else None
    context = torch.tensor(context_ids, dtype=torch.long, device=device)
    target = torch.tensor(continuation_ids, dtype=torch.long, device=device)
    mask, weight = sample_mask_states(num_samples, length, blocks, generator)
    samples = []
    for start in range(0, num_samples, batch_size):
        rows_mask = mask[start : start + batch_size].to(device)
        rows = rows_mask.shape[0]
        clean = target.expand(rows, -1)
        noisy = clean.masked_fill(rows_mask, adapter.mask_token_id)
        logits = adapter.completion_logits(
            model, context.expand(rows, -1), None, noisy, clean_completion=clean, block_length=blocks
        )
        logp = torch.log_softmax(logits[rows_mask].double(), dim=-1)  # only the masked rows
        token_logp = logp.gather(-1, clean[rows_mask][:, None])[:, 0]
        per_position = torch.zeros(rows, length, dtype=torch.float64, device=device)
        per_position[rows_mask] = token_logp
        samples.append((per_position * weight[start : start + batch_size].to(device)).sum(-1).cpu())
    samples = torch.cat(samples)
    estimate = float(samples.mean())
    return (estimate, samples) if return_samples else estimate
