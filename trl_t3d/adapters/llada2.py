"""LLaDA2.x: LLaDA2.0 (`llada2_moe`: -mini 16B, -flash 100B) and LLaDA2.1 (`llada21_moe`), block-diffusion MoE LMs.

Native classes: `trl_t3d.models.llada2` (held to the original code by tests/golden/gen_llada2.py). The model takes a
4D block mask (bool or additive) and explicit position ids, as SDAR does, so the block-diffusion adapter drives it.

Two samplers:
- `diffusion_generate` (collection, evaluation, lm-eval) counts blocks from the completion start, like every other
  family, so collected trajectories and the training states (`[prompt, x_0, x_t]`, completion-aligned blocks) agree;
- `adapter.generate(...)` / `trl_t3d.models.llada2.llada2_generate` is LLaDA2's own sampler: blocks aligned to
  absolute positions, its threshold rule and LLaDA2.1's editing, token for token as the originals.
  The two agree when the prompt length is a multiple of the block length.

Trajectories under editing: T3D's states mask, inside a block, the tokens decoded after a step; an edited token was
written twice, so no such state is one the editing decoder visited. Collection therefore never edits: it records the
teacher's editing-free trajectory (LLaDA2.1 decodes with LLaDA2.0's rule), and a `llada2_generate` output with edits is
refused as a trajectory (`LLaDA2Adapter.trajectory`), naming the fix.

MoE training: LoRA targets the attention (`query_key_value`, `dense`) and every SwiGLU (dense layers, each expert, the
shared expert: `gate_proj`, `up_proj`, `down_proj`); never the router (`mlp.gate`, a bare parameter, not a Linear) nor
`lm_head`. Router auxiliary loss: LLaDA2 has none (it balances experts with `expert_bias`, a buffer that training does
not update), so distillation adds none; `output_router_logits` stays False.
"""

from __future__ import annotations

import torch

from .block_diffusion import BlockDiffusionAdapter


class LLaDA2Adapter(BlockDiffusionAdapter):
    """LLaDA2.0 / LLaDA2.1: block diffusion in blocks of 32 with a block-diagonal causal 4D mask, MoE."""

    name = "llada2"
    model_types = ("llada2_moe", "llada21_moe")
    default_mask_token_id = 156895
    mask_token_names = ("<|mask|>", "<|MASK|>", "[MASK]", "<mask>")
    default_block_length = 32
    lora_target_modules = ("query_key_value", "dense", "gate_proj", "up_proj", "down_proj")
    extra_eos_token_names = ("<|role_end|>",)

    def trained_block_length(self, model) -> int | None:
        """LLaDA2 is trained with blocks of 32 (its config has no block key; `block_size` wins when present)."""
        return getattr(getattr(model, "config", None), "block_size", None) or self.default_block_length

    def resolve_lora_targets(self, model) -> list[str]:
        """The family's targets present in `model`; the router and the LM head are never among them."""
        found = super().resolve_lora_targets(model)
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, torch.nn.Linear) and leaf in found and (".gate." in name + "." or leaf == "lm_head"):
                raise ValueError(f"LoRA target {leaf!r} would adapt the router or the LM head ({name}).")
        return found

    def generate(self, model, input_ids, attention_mask=None, **kwargs):
        """LLaDA2's own sampler (`trl_t3d.models.llada2.llada2_generate`) with this adapter's special ids:
        `editing_threshold=...` turns on LLaDA2.1's editing."""
        from ..models.llada2 import llada2_generate

        kwargs.setdefault("mask_token_id", self.mask_token_id)
        kwargs.setdefault("eos_token_id", self.eos_token_ids or None)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        kwargs.setdefault("block_length", self.default_block_length)
        return llada2_generate(model, input_ids, attention_mask, **kwargs)

    @staticmethod
    def trajectory(output) -> torch.LongTensor:
        """The `step_map` of a `llada2_generate(..., return_dict=True)` output, refused when a token was edited."""
        edited = int(output.edit_counts.sum()) if output.edit_counts is not None else 0
        if edited:
            raise ValueError(
                f"LLaDA2.1 editing rewrote {edited} placed token(s): T3D's states assume each token is committed "
                "once, so this trajectory has no state the editing decoder visited. Record the teacher's editing-free "
                "trajectory instead: `editing_threshold=None` (or `collect_trajectories`, which never edits)."
            )
        return output.step_map
