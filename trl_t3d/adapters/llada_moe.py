"""LLaDA-MoE (`lladamoe`: inclusionAI LLaDA-MoE-7B-A1B-Base / -Instruct): bidirectional masked diffusion, MoE.

Native class: `trl_t3d.models.llada_moe` (held to the original code by tests/golden/gen_lladamoe.py). Decoding and
training are LLaDA's (semi-autoregressive blocks over a bidirectional model); unlike LLaDA it takes position ids and a
2D padding mask, so left-padded rows decode as they would alone.

MoE training: LoRA targets the attention (`q_proj`, `k_proj`, `v_proj`, `o_proj`) and every SwiGLU (dense layers, each
expert, the shared expert: `gate_proj`, `up_proj`, `down_proj`); never the router (`mlp.gate`, a Linear whose leaf name
is `gate`) nor `lm_head`. Router auxiliary loss: off during distillation (`output_router_logits` stays False, the
published value; the original's aux-loss path never worked, see the model's docstring), so nothing is added to the
DDO objective.
"""

from __future__ import annotations

from .families import LLaDAAdapter


class LLaDAMoEAdapter(LLaDAAdapter):
    name = "llada_moe"
    model_types = ("lladamoe", "llada_moe")
    auto_class = "AutoModelForCausalLM"
    default_mask_token_id = 156895
    mask_token_names = ("<|mask|>", "<|mdm_mask|>", "<|MASK|>", "[MASK]", "<mask>")
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    accepts_position_ids = True
    extra_eos_token_names = ("<|role_end|>",)
