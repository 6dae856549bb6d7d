"""The built-in loss terms and named objectives.

T3D's own (`ddo`, `path`), the paper's baseline (`ntd`), dParallel's certainty forcing (`certainty`), our mean-field
reverse KL to the teacher (`mean_field`), TAD's temporal-aware distillation (`tad`, arXiv 2605.09536) and plain
masked-diffusion SFT on the teacher's completions (`sft`, random masks as in pretraining). Each is one class over the
`StepContext`; the math lives in `trl_t3d.losses`.
"""

from __future__ import annotations

import torch

from ..losses import (
    certainty_loss,
    ddo_loss,
    mean_field_kl,
    mean_field_queries,
    mean_over_mask,
    ntd_loss,
    path_loss_from_token_logps,
    picked_token_logps,
    sample_fake_tokens,
    scatter_rows,
    tad_loss,
)
from .base import LossTerm, StepContext, TermOutput, register_loss_term, register_objective


@register_loss_term
class DDOTerm(LossTerm):
    """Direct Discriminative Optimization: the policy/reference log-likelihood ratio as an implicit discriminator
    between the trajectory's tokens y (real) and the reference's one-shot prediction ŷ (fake)."""

    name = "ddo"
    reads_reference = True
    settings = ("alpha", "beta", "reference_temperature")

    def describe(self) -> str:
        sampled = (
            f", reference_temperature = {self.args.reference_temperature}" if self.args.reference_temperature else ""
        )
        return f"alpha = {self.args.alpha}, beta = {self.args.beta}{sampled}"

    def compute(self, ctx: StepContext) -> TermOutput:
        ref, mask = ctx.reference, ctx.loss_mask
        policy_fake_tok = picked_token_logps(ctx.policy_log_probs, mask, ref.fake)
        policy_real = mean_over_mask(ctx.policy_token_logps, mask)
        policy_fake = mean_over_mask(policy_fake_tok, mask)
        ref_real = mean_over_mask(ref.real_token_logps, mask)
        ref_fake = mean_over_mask(ref.fake_token_logps, mask)
        loss, loss_real, loss_fake = ddo_loss(
            policy_real, policy_fake, ref_real, ref_fake, self.args.alpha, self.args.beta
        )
        margin_real, margin_fake = (policy_real - ref_real).detach(), (policy_fake - ref_fake).detach()
        metrics = {
            "loss_real": loss_real,
            "loss_fake": loss_fake,
            "logps/policy_real": policy_real,
            "logps/policy_fake": policy_fake,
            "logps/ref_real": ref_real,
            "logps/ref_fake": ref_fake,
            "margins/real": margin_real,
            "margins/fake": margin_fake,
            "accuracy/real": (margin_real > 0).float(),
            "accuracy/fake": (margin_fake < 0).float(),
            "accuracy": ((margin_real > 0).float() + (margin_fake < 0).float()) / 2,
            "fake_equals_real": (ref.fake == ctx.labels)[mask].float().mean()[None],
        }
        return TermOutput(loss, metrics)


@register_loss_term
class PathTerm(LossTerm):
    """T3D's trajectory path loss: the policy's cross-entropy on y averaged over the step levels of the trajectory."""

    name = "path"
    settings = ("path_k_steps",)
    default_weight = "lambda_path"

    def describe(self) -> str:
        return f"k = {self.args.path_k_steps}"

    def compute(self, ctx: StepContext) -> TermOutput:
        loss = path_loss_from_token_logps(
            ctx.policy_token_logps, ctx.loss_mask, ctx.inputs["decode_rank"], ctx.block_length, self.args.path_k_steps
        )
        return TermOutput(loss)


@register_loss_term
class NTDTerm(LossTerm):
    """Naive trajectory distillation (T3D's baseline): masked cross-entropy on y at the trajectory state."""

    name = "ntd"

    def compute(self, ctx: StepContext) -> TermOutput:
        return TermOutput(ntd_loss(ctx.policy_token_logps, ctx.loss_mask))


@register_loss_term
class CertaintyTerm(LossTerm):
    """dParallel's certainty forcing: the entropy of the policy's correct predictions at the masked positions."""

    name = "certainty"

    def compute(self, ctx: StepContext) -> TermOutput:
        return TermOutput(certainty_loss(ctx.policy_log_probs, ctx.labels, ctx.loss_mask))


@register_loss_term
class TADTerm(LossTerm):
    """TAD (Temporal-Aware trajectory self-Distillation, arXiv 2605.09536): the masked positions the trajectory
    decodes within the next `tad_near_tokens` steps of their block get hard cross-entropy on y; the distant ones a soft
    KL(p_ref || p_θ) to the frozen teacher at the same state (its planning of later tokens). Steps ahead are counted
    in decode order inside the block (trajectories commit one token per step)."""

    name = "tad"
    reads_reference = True
    settings = ("tad_near_tokens", "tad_distant_weight")

    def compute(self, ctx: StepContext) -> TermOutput:
        near_tokens = self.args.tad_near_tokens or self.args.student_tokens_per_step
        loss, near = tad_loss(
            ctx.policy_log_probs,
            ctx.reference.log_probs,
            ctx.policy_token_logps,
            ctx.loss_mask,
            ctx.inputs["decode_rank"],
            ctx.block_length,
            near_tokens,
            self.args.tad_distant_weight,
        )
        share = near.sum(-1).float() / ctx.loss_mask.sum(-1).clamp(min=1)
        return TermOutput(loss, {"tad/near_share": share})


@register_loss_term
class MeanFieldTerm(LossTerm):
    """Mean-field reverse KL to the teacher. The student's one-step prediction x̃ fills the masked set (its argmax at
    `mean_field_temperature=0`, a Gumbel sample at > 0; never the mask token); each query puts
    `mean_field_positions` positions per block back to the mask token and the frozen teacher scores them given the
    rest, p(x_i | x̃_-query, context); the loss is the mean over queried positions of KL(q_i || p_i).

    With x̃ sampled from q and one position per query this is the mean-field gradient of KL(q || p_teacher) over
    factorized q. With the argmax fill (the default) it is the teacher re-scoring the student's own greedy block: it
    pulls each position toward what the teacher writes given the student's other positions, favouring one coherent
    answer per block, and can also settle on a consistent wrong one. Costs `mean_field_queries` reference forwards
    per micro-step (on the rows a query touches); skipped at evaluation."""

    name = "mean_field"
    reads_reference = True
    settings = ("mean_field_queries", "mean_field_positions", "mean_field_temperature")
    training_only = True

    def describe(self) -> str:
        positions = self.args.mean_field_positions
        spaced = "one position per 8 tokens of a block" if positions is None else f"{positions} positions per block"
        queries = self.args.mean_field_queries
        noun = "query" if queries == 1 else "queries"
        return f"{queries} {noun} of {spaced}, fill temperature {self.args.mean_field_temperature}"

    @staticmethod
    def positions_per_query(positions: int | None, block_length: int) -> int:
        """`mean_field_positions`, with `None` resolved to one position per 8 tokens of the block (at least one)."""
        return max(1, block_length // 8) if positions is None else positions

    def __init__(self, args, max_over_processes=None):
        super().__init__(args)
        self.max_over_processes = max_over_processes or (lambda count: count)

    def compute(self, ctx: StepContext) -> TermOutput:
        args, mask, inputs = self.args, ctx.loss_mask, ctx.inputs
        policy_log_probs = ctx.policy_log_probs
        device, counts = policy_log_probs.device, mask.sum(-1)
        noise = None
        if args.mean_field_temperature > 0:
            noise = ctx.uniform("mean_field_fill", counts, policy_log_probs.shape[-1], device)
        fill = sample_fake_tokens(
            policy_log_probs.detach(), args.mean_field_temperature, uniform=noise, never_id=ctx.never_id
        )
        filled = inputs["xt"].masked_scatter(mask, fill.to(inputs["xt"].dtype))
        order = scatter_rows(ctx.uniform("mean_field_queries", counts, 1, device)[:, 0], mask)
        queries = mean_field_queries(
            mask,
            ctx.block_length,
            args.mean_field_queries,
            order=order,
            positions=self.positions_per_query(args.mean_field_positions, ctx.block_length),
        )
        # a queried position shows the teacher noise: the mask token (not a random token the collator placed there)
        noised = inputs["xt"] if ctx.never_id is None else torch.full_like(inputs["xt"], ctx.never_id)
        teacher_rows = torch.zeros(policy_log_probs.shape, dtype=torch.float32, device=device)
        covered = torch.zeros_like(mask)
        row_of = scatter_rows(torch.arange(policy_log_probs.shape[0], device=device), mask)
        num_queries = self.max_over_processes(int(queries.flatten(1).any(-1).sum()))
        for query in queries[:num_queries]:
            rows = query.any(-1)
            if not bool(rows.any()):  # an empty query on this process (others have more): keep the forward count
                rows[0] = True
            state = {k: v[rows] if torch.is_tensor(v) and v.shape[:1] == rows.shape else v for k, v in inputs.items()}
            state["xt"] = torch.where(query, noised, filled)[rows]
            logits = ctx.reference_logits(state)
            selected = query[rows]
            teacher_rows[row_of[query]] = logits[selected].float().log_softmax(-1)
            covered |= query
        rows = covered[mask]
        kl = mean_field_kl(policy_log_probs[rows], teacher_rows[rows])
        agrees = (teacher_rows[rows].argmax(-1) == policy_log_probs[rows].argmax(-1)).float()
        loss = mean_over_mask(scatter_rows(kl, covered), covered)
        agreement = mean_over_mask(scatter_rows(agrees, covered), covered)
        return TermOutput(loss, {"mean_field/teacher_agrees": agreement})


@register_loss_term
class SFTTerm(LossTerm):
    """Plain masked-diffusion SFT on the teacher's completions, as in pretraining (LLaDA's SFT loss): per example a
    noise level t ~ U(0, 1), every completion position masked with probability t (at least one), and the policy's
    cross-entropy on the masked positions weighted 1/t, over the completion length. Not trajectory-ordered: the
    baseline a user tries first. Its own policy forward; the trajectory state x_t is not used."""

    name = "sft"

    def compute(self, ctx: StepContext) -> TermOutput:
        inputs, labels = ctx.inputs, ctx.labels
        completion = inputs["completion_mask"].bool()
        lengths = completion.sum(-1)
        eps = 1e-3
        t = eps + (1 - eps) * ctx.uniform("sft_time", torch.ones_like(lengths), 1)[:, 0].float()  # (B,)
        draws = scatter_rows(ctx.uniform("sft_mask", lengths, 1)[:, 0].float(), completion)
        masked = completion & (draws < t[:, None])
        # at least one masked position per example: its completion's position with the smallest draw
        smallest = draws.masked_fill(~completion, 2.0).argmin(-1)
        masked[torch.arange(masked.shape[0], device=masked.device), smallest] |= lengths > 0
        if ctx.adapter.noise == "mask":
            noisy = labels.masked_fill(masked, ctx.adapter.mask_token_id)
        else:
            random = torch.randint_like(labels, int(ctx.adapter.vocab_size or labels.max() + 1))
            noisy = torch.where(masked, random, labels)
        state = dict(inputs, xt=noisy, loss_mask=masked)
        logits = ctx.policy_logits(state)
        token_logps = picked_token_logps(logits[masked].float().log_softmax(-1), masked, labels)
        loss = -(token_logps / t[:, None]).sum(-1) / lengths.clamp(min=1)
        return TermOutput(loss, {"sft/mask_ratio": masked.sum(-1).float() / lengths.clamp(min=1)})


# Named objectives (weight None: the term's default weight); a term's own name is the objective of that term alone.
register_objective("t3d", [("ddo", None), ("path", None)])
register_objective("t3d_mf", [("ddo", None), ("path", None), ("mean_field", None)])
register_objective("ntd_mf", [("ntd", None), ("mean_field", None)])
