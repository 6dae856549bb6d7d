"""How many positions a denoising step commits: LLaDA's even split, Dream's timestep schedule, Fast-dLLM's rules.

A block is decoded in at most `num_steps` forward passes. Each step has a scheduled count per row (the floor); the
confidence rules (`threshold`, `factor`) may commit more. Everything here is a pure function of the step index, the
undecided positions and the confidences, so it is tested by hand.
"""

from __future__ import annotations

import torch

from .sampling import RowGenerators, commit_schedule


def dream_timesteps(steps: int, eps: float, device=None) -> torch.Tensor:
    """Dream's `diffusion_generate` time grid: `linspace(1, eps, steps + 1)` in float32 (its precision matters: the
    counts below truncate products computed on it)."""
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_commit_counts(num_undecided: torch.Tensor, step: int, steps: int, eps: float) -> torch.Tensor:
    """Dream's count for step `step` of `steps`: `int(n * (1 - s / t))` of the n undecided positions, all at the last.

    Computed as Dream does, in float32 on the grid `dream_timesteps`; the count is often 0 at early steps.
    """
    if step >= steps - 1:
        return num_undecided.clone()
    timesteps = dream_timesteps(steps, eps, num_undecided.device)
    t, s = timesteps[step], timesteps[step + 1]
    return (num_undecided.to(torch.float32) * (1 - s / t)).long()


def dream_transfer_probability(step: int, steps: int, eps: float) -> torch.Tensor | float:
    """Probability that Dream's `origin` algorithm commits an undecided position at `step`: 1 - s/t, 1 at the last."""
    if step >= steps - 1:
        return 1.0
    timesteps = dream_timesteps(steps, eps)
    return 1 - timesteps[step + 1] / timesteps[step]


def origin_commits(undecided: torch.Tensor, probability, generator=None) -> torch.Tensor:
    """Dream's `origin` rule: every undecided position is committed independently with `probability`.

    One uniform draw per undecided position, in row-major order over the batch, as Dream's code draws them; with the
    global generator and Dream's seed the same positions are committed. With `RowGenerators`, each row's draws come
    from its own generator.
    """
    if isinstance(generator, RowGenerators):
        draws = generator.rand_per_row(undecided.sum(-1).tolist(), device=undecided.device)
    else:
        draws = torch.rand(int(undecided.sum()), generator=generator, device=undecided.device)
    commit = torch.zeros_like(undecided)
    commit[undecided] = draws < torch.as_tensor(probability, device=undecided.device)
    return commit


def factor_commit_counts(confidence: torch.Tensor, undecided: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule: how many positions to commit per row.

    The r-th most confident undecided position (r = 1, 2, ...) is committed when its confidence is
    >= 1 - factor / (r + 1); the most confident always is. Confidences fall and thresholds rise with r, so the
    committed ranks are the first ones. (Fast-dLLM's own loop also commits the last remaining rank when it is the
    only one below its threshold; this rule does not.)
    """
    num_undecided = undecided.sum(-1)
    ranked = confidence.masked_fill(~undecided, float("-inf")).sort(-1, descending=True).values
    ranks = torch.arange(1, ranked.shape[-1] + 1, device=ranked.device, dtype=torch.float64)
    passing = ranked.to(torch.float64) >= 1 - float(factor) / (ranks + 1)
    passing[:, 0] = True
    passing &= ranks[None, :] <= num_undecided[:, None]
    return passing.long().cumprod(-1).sum(-1)


class BlockSchedule:
    """The steps of one block: how many there are and each step's scheduled count per row.

    - `"llada"` (LLaDA's `get_num_transfer_tokens`): a fixed list, equal split or `tokens_per_step` each;
    - `"dream"` (Dream's `diffusion_generate`): counts from the undecided positions at each step, see
      `dream_commit_counts`;
    - with `threshold_rule="fast_dllm"` (or a `factor` under it): one per step; the confidence rule does the rest.
    """

    def __init__(self, config, block_length: int):
        self.schedule = config.schedule
        self.eps = float(config.eps)
        self.at_least_one = config.threshold_rule == "fast_dllm"
        if self.at_least_one:
            self.num_steps = block_length
            self.fixed = [1] * block_length
        else:
            self.num_steps = config.steps_per_block()
            self.fixed = commit_schedule(block_length, self.num_steps, config.tokens_per_step)

    def counts(self, step: int, block_undecided: torch.Tensor) -> torch.Tensor:
        """Scheduled count (B,) of this step; rows with nothing left get 0."""
        if self.schedule == "dream" and not self.at_least_one:
            counts = dream_commit_counts(block_undecided.sum(-1), step, self.num_steps, self.eps)
        else:
            counts = torch.full(
                (block_undecided.shape[0],), self.fixed[step], dtype=torch.long, device=block_undecided.device
            )
        return torch.minimum(counts, block_undecided.sum(-1))

    def transfer_probability(self, step: int):
        """Dream's `origin` probability of this step."""
        return dream_transfer_probability(step, self.num_steps, self.eps)
