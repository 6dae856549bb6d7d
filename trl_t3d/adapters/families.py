"""Concrete adapters for the bidirectional families of DESIGN.md's table."""

from __future__ import annotations

from .base import DiffusionAdapter, position_ids_from_mask


class GenericMaskedLMAdapter(DiffusionAdapter):
    """Any bidirectional model (`config.is_causal=False`) with a mask token (in its config, its tokenizer, or passed
    as `mask_token_id`). A causal model is refused whatever its mask id: see `adapters.registry`."""

    name = "generic"

    @classmethod
    def matches(cls, config) -> bool:
        return getattr(config, "is_causal", True) is False and getattr(config, "mask_token_id", None) is not None


class LLaDAAdapter(DiffusionAdapter):
    """LLaDA / LLaDA-1.5 (native `trl_t3d.models.llada`; LLaDA-MoE has its own, `adapters/llada_moe.py`): no
    position ids (the original counts positions from 0 whatever the padding; RoPE is relative, so left padding changes
    nothing)."""

    name = "llada"
    model_types = ("llada",)
    auto_class = "AutoModel"
    default_mask_token_id = 126336
    mask_token_names = ("<|mdm_mask|>", *DiffusionAdapter.mask_token_names)
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
    accepts_position_ids = False
    extra_eos_token_names = ("<|eot_id|>",)  # LLaDA-Instruct ends turns with EoT (126348) as well as EOS (126081)


class DreamAdapter(DiffusionAdapter):
    """Dream: logits shifted by one (trained from an AR model); 4D boolean padding mask and cumulative positions."""

    name = "dream"
    model_types = ("dream",)
    logits_shift = 1
    auto_class = "AutoModel"
    default_mask_token_id = 151666

    def forward_kwargs(self, input_ids, attention_mask):
        kwargs = {"input_ids": input_ids, "use_cache": False}
        if attention_mask is not None and not bool(attention_mask.all()):
            valid = attention_mask.bool()
            # Key-only mask: every query (pads included) sees the real tokens, so no row is all -inf.
            kwargs["attention_mask"] = valid[:, None, None, :].expand(-1, 1, input_ids.shape[1], -1)
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        return kwargs
