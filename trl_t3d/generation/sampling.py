"""Pure functions of one denoising step: sample x0, score it, decide how many and which positions to commit.

Randomness comes from one `torch.Generator` (or the global one), drawn as batch-shaped tensors, or from
`RowGenerators`: one generator per row, each row's numbers drawn from its own, so a row samples the same alone and in
any batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RowGenerators:
    """One `torch.Generator` per row of a batch (on the batch's device).

    Row i's random numbers come from `generators[i]` alone, and are drawn only while row i is `active`: at a forward
    that it would run if it were decoded alone (the decoder sets `active` before each forward). A row that finished
    its block or stopped at EOS draws nothing while its batch mates go on, so its later draws do not depend on them:
    a prompt samples the same tokens alone and in any batch, in any order.
    """

    def __init__(self, generators: Sequence[torch.Generator], batch_size: int):
        self.generators = list(generators)
        if len(self.generators) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(self.generators)} generators for a batch of {batch_size} prompts: give "
                "one per prompt (row), or a single torch.Generator."
            )
        self.active: list[bool] | None = None  # rows that draw at the current forward; None: every row

    def _rows(self):
        for row, generator in enumerate(self.generators):
            if self.active is None or self.active[row]:
                yield row, generator

    def rand(self, shape, *, dtype=None, device=None) -> torch.Tensor:
        """Uniform [0, 1) values of `shape` (rows first): each active row's from its own generator, 0.5 elsewhere (a
        row that is not active commits nothing, so its values are never read)."""
        out = torch.full(tuple(shape), 0.5, dtype=dtype, device=device)
        for row, generator in self._rows():
            out[row] = torch.rand(tuple(shape[1:]), dtype=dtype, device=device, generator=generator)
        return out

    def rand_per_row(self, counts: Sequence[int], *, device=None) -> torch.Tensor:
        """`counts[i]` uniform values for each row i, concatenated in row order (rows with a count of 0 draw nothing)."""
        parts = [
            torch.rand(int(counts[row]), device=device, generator=generator)
            for row, generator in self._rows()
            if int(counts[row])
        ]
        return torch.cat(parts) if parts else torch.zeros(0, device=device)


def uniform(shape, generator=None, *, dtype=None, device=None) -> torch.Tensor:
    """`torch.rand(shape)` from `generator`: one `torch.Generator` (or None, the global one), or `RowGenerators`."""
    if isinstance(generator, RowGenerators):
        return generator.rand(shape, dtype=dtype, device=device)
    return torch.rand(shape, dtype=dtype, device=device, generator=generator)


def commit_schedule(block_length: int, steps: int, tokens_per_step: int | None = None) -> list[int]:
    """Number of tokens committed at each of the `steps` steps of a block; sums to `block_length`.

    With `tokens_per_step`, that many per step and the remainder last. Otherwise an equal split with the remainder
    on the first steps, as LLaDA's `get_num_transfer_tokens` (its linear noise schedule commits equally per step).
    """
    if steps <= 0 or steps > block_length:
        raise ValueError(f"Need 1 <= steps <= block_length, got steps={steps}, block_length={block_length}.")
    if tokens_per_step is not None:
        schedule = [min(tokens_per_step, block_length - i * tokens_per_step) for i in range(steps)]
    else:
        base, remainder = divmod(block_length, steps)
        schedule = [base + (1 if i < remainder else 0) for i in range(steps)]
    if sum(schedule) != block_length or min(schedule) < 1:
        raise ValueError(f"Inconsistent schedule {schedule} for block_length={block_length}, steps={steps}.")
    return schedule


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k / the top-p nucleus to -inf (the most likely token always survives)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_max_scores(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | RowGenerators | None = None
):
    """Scores whose argmax samples softmax(logits / T) (Gumbel-max, in float64 as LLaDA: exp(l) / (-log u)^T).

    Temperature 0 returns the logits unchanged (greedy). float64 matters: low-precision Gumbel noise is known to
    hurt masked-diffusion sampling (arXiv:2409.02908).
    """
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    u = uniform(logits.shape, generator, dtype=torch.float64, device=logits.device)
    u = u.clamp_min(torch.finfo(torch.float64).tiny)  # u == 0 would give an infinite noise
    return logits.exp() / (-torch.log(u)) ** temperature


def confidence_of(
    logits: torch.Tensor, x0: torch.Tensor, remasking: str, generator: torch.Generator | RowGenerators | None = None
) -> torch.Tensor:
    """Confidence in (0, 1] of each predicted token, by remasking policy (higher = commit earlier).

    low_confidence: p(x0) (LLaDA); margin: p(top1) - p(top2); entropy: exp(-H(p)); random: uniform noise.
    Probabilities are computed in float64 as LLaDA's reference.
    """
    if remasking == "random":
        return uniform(x0.shape, generator, dtype=torch.float64, device=x0.device)
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    if remasking == "low_confidence":
        return torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    if remasking == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if remasking == "entropy":
        entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(torch.float64).tiny))).sum(-1)
        return torch.exp(-entropy)
    raise ValueError(f"Unknown remasking policy {remasking!r}.")


def propose_tokens(
    logits: torch.Tensor,
    remasking: str,
    temperature: float = 0.0,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    never_ids: tuple[int, ...] | list[int] = (),
    generator: torch.Generator | RowGenerators | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoising step's proposal: the token x0 of every position and its confidence, shapes (B, L).

    Tokens in `never_ids` (the mask token: noise, not a word) are never proposed, however likely the model finds them
    and at any temperature. Without top-k/top-p the confidence is the model's own probability of x0, exactly as
    LLaDA's reference; with them, the probability under the filtered candidates x0 was drawn from.
    """
    candidates = logits
    if never_ids:
        ids = torch.tensor([int(i) for i in never_ids], device=logits.device)
        candidates = candidates.index_fill(-1, ids[ids < logits.shape[-1]], float("-inf"))
    filtered = (top_k is not None and top_k < logits.shape[-1]) or (top_p is not None and top_p < 1.0)
    if filtered:
        candidates = filter_logits(candidates, top_k, top_p)
    scores = gumbel_max_scores(candidates, temperature, generator)
    if temperature != 0:  # exp(-inf) / noise^T is 0 or, when the noise underflows, NaN (which argmax would pick)
        scores = scores.masked_fill(candidates == float("-inf"), float("-inf"))
    x0 = scores.argmax(-1)
    confidence = confidence_of(candidates if filtered else logits, x0, remasking, generator)
    return x0, confidence


def select_commits(
    confidence: torch.Tensor, undecided: torch.Tensor, num_to_commit: torch.Tensor, threshold: float | None = None
) -> torch.Tensor:
    """Boolean (B, L) of the positions to commit this step, among the `undecided` ones of the current block.

    Each row commits its `num_to_commit` most confident undecided positions (clamped to how many remain); with a
    `threshold`, also every undecided position whose confidence is >= threshold. `confidence`, `undecided` are
    (B, L) restricted to the current block, so nothing beyond it can be committed.
    """
    confidence = confidence.masked_fill(~undecided, float("-inf"))
    k = torch.minimum(num_to_commit.to(undecided.device).long(), undecided.sum(-1))
    commit = torch.zeros_like(undecided)
    max_k = int(k.max()) if k.numel() else 0
    if max_k > 0:
        top = torch.topk(confidence, max_k, dim=-1).indices
        keep = torch.arange(max_k, device=k.device)[None, :] < k[:, None]
        commit.scatter_(-1, top, keep)
    if threshold is not None:
        commit |= undecided & (confidence >= threshold)
    return commit & undecided
