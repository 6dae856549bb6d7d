"""Pure tensor functions of T3D's objective: masked sequence log-probs, the DDO loss and the trajectory path loss.

Everything here is stateless and vectorized (no Python loop over blocks or levels, no `.item()`), so the trainer can
derive every term from one reference and one policy forward. Log-softmax is only ever taken over the rows of the
masked set M, in fp32: the full-vocabulary fp32 log-softmax of the positions outside M is never materialized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocks import block_of, ranks_within_blocks  # noqa: F401  (ranks_within_blocks: the collator reads it here)


def masked_log_probs(logits: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax of the masked rows only, (N, V) with N = |M|: N x V, never B x L x V."""
    return logits[loss_mask.bool()].float().log_softmax(dim=-1)


def scatter_rows(values: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Per-row values (N,) back onto (B, L), 0 outside the mask."""
    mask = loss_mask.bool()
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def picked_token_logps(log_probs: torch.Tensor, loss_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label_i) from the masked rows' log-probs, as (B, L), 0 outside the mask."""
    picked = log_probs.gather(-1, labels[loss_mask.bool()].long().unsqueeze(-1)).squeeze(-1)
    return scatter_rows(picked, loss_mask)


def selected_token_logps(
    logits: torch.Tensor, loss_mask: torch.Tensor, *labels: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """fp32 log p(label_i) at the masked positions only, returned as (B, L) tensors that are 0 outside the mask.

    The masked rows are gathered first (N x V, N = |M|), so the fp32 log-softmax costs N x V, not B x L x V. Several
    label tensors (e.g. the real `y` and the fake `ŷ`) share that one log-softmax.
    """
    log_probs = masked_log_probs(logits, loss_mask)
    return tuple(picked_token_logps(log_probs, loss_mask, lab) for lab in labels)


def mean_over_mask(token_values: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean of `token_values` over the masked positions (0 for an example with an empty mask)."""
    mask = loss_mask.to(token_values.dtype)
    return (token_values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def masked_sequence_logps(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """`logp(z | x_t)` = mean over i in M of log p(z_i | x_t), per example (shape (B,)).

    T3D uses the mean, not DDO's sum: with a mean, `beta` acts on a per-token log-ratio, independent of |M|.
    """
    (token_logps,) = selected_token_logps(logits, loss_mask, labels)
    return mean_over_mask(token_logps, loss_mask)


def ntd_loss(token_logps: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Naive trajectory distillation (T3D's baseline), per example: mean cross-entropy of `y` over the masked set of a
    trajectory state, `-mean_{i in M} log p_θ(y_i | x_t)`."""
    return -mean_over_mask(token_logps.float(), loss_mask)


def certainty_loss(log_probs: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Certainty forcing (dParallel, arXiv 2509.26488), per example: mean entropy of the policy's prediction at the
    masked positions it already predicts correctly (argmax = y_i), so confident-and-right tokens become more
    confident and threshold decoding commits more of them per forward; wrong predictions are left to the other terms.

    `log_probs` are the masked rows' log-probs (N, V) as `masked_log_probs` returns them.
    """
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # (N,)
    correct = log_probs.argmax(-1) == labels[loss_mask.bool()]
    per_token = scatter_rows(entropy * correct, loss_mask)
    return mean_over_mask(per_token, scatter_rows(correct, loss_mask) & loss_mask.bool())


def ddo_loss(
    policy_real_logps: torch.Tensor,
    policy_fake_logps: torch.Tensor,
    ref_real_logps: torch.Tensor,
    ref_fake_logps: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Discriminative Optimization, per example: `(loss, loss_real, loss_fake)`, `loss = loss_real + loss_fake`.

    loss_real = -log σ(β(logp_θ(y) - logp_ref(y)))
    loss_fake = -α log(1 - σ(β(logp_θ(ŷ) - logp_ref(ŷ)))) = -α log σ(-β(...))   (stable form, no log(0))
    """
    loss_real = -F.logsigmoid(beta * (policy_real_logps - ref_real_logps))
    loss_fake = -alpha * F.logsigmoid(-beta * (policy_fake_logps - ref_fake_logps))
    return loss_real + loss_fake, loss_real, loss_fake


def path_level_weights(
    loss_mask: torch.Tensor, decode_rank: torch.Tensor, block_length: int, k_steps: int
) -> torch.Tensor:
    """Weight of each position in the path loss, (B, L), so that `sum_i w_i * CE_i` is the level-averaged CE.

    Level l holds the masked positions whose decode rank inside their block is < (l + 1) * k (the first (l+1)k tokens
    of each block in decode order). Each non-empty level contributes the mean CE over its positions; the levels are
    averaged. A position of rank r belongs to every level l >= r // k, so earlier-decoded tokens weigh more.
    """
    if k_steps < 1:
        raise ValueError(f"`path_k_steps` must be >= 1, got {k_steps}.")
    num_levels = -(-block_length // k_steps)
    mask = loss_mask.bool()
    limits = (torch.arange(num_levels, device=mask.device) + 1) * k_steps  # (N_levels,)
    in_level = (decode_rank.unsqueeze(-1) < limits) & mask.unsqueeze(-1)  # (B, L, N_levels)
    level_sizes = in_level.sum(1)  # (B, N_levels)
    nonempty = (level_sizes > 0).sum(-1).clamp(min=1)  # (B,)
    per_level = in_level.float() / level_sizes.clamp(min=1).unsqueeze(1)  # (B, L, N_levels)
    return per_level.sum(-1) / nonempty.unsqueeze(-1)


def path_loss_from_token_logps(
    token_logps: torch.Tensor, loss_mask: torch.Tensor, decode_rank: torch.Tensor, block_length: int, k_steps: int
) -> torch.Tensor:
    """Per-example path loss from per-token log p(y_i | x_t) already computed at the masked positions."""
    weights = path_level_weights(loss_mask, decode_rank, block_length, k_steps)
    return -(weights * token_logps.float()).sum(-1)


def path_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    decode_rank: torch.Tensor,
    block_length: int,
    k_steps: int = 4,
) -> torch.Tensor:
    """Trajectory path loss, per example (B,): the policy's CE on `y`, averaged over the step levels of the trajectory.

    `logits` are the policy's logits at x_t (the same ones DDO uses), `decode_rank` the rank of each completion
    position inside its block by `step_map` (0 = decoded first), `loss_mask` the masked set M.
    """
    (token_logps,) = selected_token_logps(logits, loss_mask, labels)
    return path_loss_from_token_logps(token_logps, loss_mask, decode_rank, block_length, k_steps)


def sample_fake_tokens(
    ref_logits: torch.Tensor,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    uniform: torch.Tensor | None = None,
    never_id: int | None = None,
) -> torch.Tensor:
    """The one-shot prediction of the masked rows, as a few-step decoder writes it: argmax, or Gumbel-max at
    `temperature` (float64), never `never_id` (the mask token: noise, not a prediction).

    `ref_logits` are (N, V) logits of the masked rows. The noise is `uniform` ((N, V) values in [0, 1), e.g. keyed per
    example) or drawn from `generator`. The same ŷ is scored by reference and policy.
    """
    if never_id is not None:
        ref_logits = ref_logits.clone()
        ref_logits[:, never_id] = float("-inf")
    if temperature <= 0:
        return ref_logits.argmax(-1)
    logits = ref_logits.double() / temperature
    if uniform is None:
        uniform = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    gumbel = -torch.log(-torch.log(uniform.double().clamp(min=1e-20)))
    return (logits + gumbel).argmax(-1)


def mean_field_queries(
    loss_mask: torch.Tensor,
    block_length: int,
    num_queries: int,
    generator: torch.Generator | None = None,
    *,
    order: torch.Tensor | None = None,
    positions: int = 1,
) -> torch.Tensor:
    """(S, B, L) bool, S = `num_queries`: query s holds, in every block, the positions of ranks
    [s·k, (s+1)·k) (k = `positions`) of that block's masked set in a random order (empty where the block has fewer
    masked positions). The order is that of `order` ((B, L) random keys, read at the masked positions; e.g. keyed per
    example), else drawn from `generator`.

    Blocks never share a query position, so one teacher forward per query gives each block's exact conditional
    for bidirectional states (a single trained block) and block-causal ones (blocks see only each other's clean
    tokens).
    """
    if num_queries < 1:
        raise ValueError(f"`mean_field_queries` must be >= 1, got {num_queries}.")
    mask = loss_mask.bool()
    if order is None:
        order = torch.rand(mask.shape, generator=generator, device=mask.device)
    keys = order.float().masked_fill(~mask, 2.0)  # masked first
    ranks = ranks_within_blocks(keys, block_length)
    if positions < 1:
        raise ValueError(f"`mean_field_positions` must be >= 1, got {positions}.")
    slots = torch.arange(num_queries, device=mask.device).view(-1, 1, 1)
    return mask.unsqueeze(0) & (ranks.unsqueeze(0) // positions == slots)


def mean_field_kl(policy_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """Per row, KL(q_i || p_i) = Σ_v q_i(v) (log q_i(v) - log p_i(v)) over (N, V) log-probs, fp32: the mode-seeking
    (reverse) KL of the student's one-step prediction q_i from the teacher's conditional p_i."""
    policy_log_probs = policy_log_probs.float()
    return (policy_log_probs.exp() * (policy_log_probs - teacher_log_probs.float())).sum(-1)


def tad_loss(
    policy_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    policy_token_logps: torch.Tensor,
    loss_mask: torch.Tensor,
    decode_rank: torch.Tensor,
    block_length: int,
    near_tokens: int,
    distant_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TAD's temporal-aware loss per example, and the near positions (B, L).

    A masked position is *near* when fewer than `near_tokens` masked positions of its block come before it in decode
    order (it is decoded within the next `near_tokens` steps of a one-token-per-step trajectory), else *distant*.
    loss = (Σ_near -log p_θ(y_i) + distant_weight · Σ_distant KL(p_teacher,i || p_θ,i)) / |M|, with the (N, V)
    log-probs of the masked rows.
    """
    mask = loss_mask.bool()
    blocks = block_of(mask.shape[-1], block_length, mask.device)
    rank = decode_rank.masked_fill(~mask, torch.iinfo(decode_rank.dtype).max)
    num_blocks = int(blocks[-1]) + 1 if mask.shape[-1] else 0
    first = torch.full((mask.shape[0], num_blocks), torch.iinfo(rank.dtype).max, dtype=rank.dtype, device=mask.device)
    first = first.scatter_reduce(1, blocks.expand_as(rank), rank, reduce="amin")
    ahead = decode_rank - first.gather(1, blocks.expand_as(rank))
    near = mask & (ahead < near_tokens)
    teacher = teacher_log_probs.float()
    kl = scatter_rows((teacher.exp() * (teacher - policy_log_probs.float())).sum(-1), mask)
    total = (-policy_token_logps.float() * near).sum(-1) + distant_weight * (kl * (mask & ~near)).sum(-1)
    return total / mask.sum(-1).clamp(min=1), near
