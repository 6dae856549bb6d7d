"""LLaDA-MoE configuration: the published `config.json` keys of inclusionAI's LLaDA-MoE-7B-A1B (`lladamoe`)."""

from __future__ import annotations

from transformers.configuration_utils import PreTrainedConfig

from ..configuration_common import PublishedConfigMixin, never_causal


class LLaDAMoEConfig(PublishedConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`LLaDAMoEModel`] / [`LLaDAMoEModelLM`] (LLaDA-MoE-7B-A1B-Base / -Instruct): a bidirectional
    masked-diffusion MoE LM (OLMoE-style layers). Fields and defaults are those of the published
    `configuration_lladamoe.py` (whose defaults are placeholders, -1: every checkpoint sets them); unknown published keys
    are kept as attributes and written back, `auto_map` included.

    Architecture:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads (`int`); num_key_value_heads (`int`,
            *optional*): GQA heads, `None` = MHA. Head width is `hidden_size // num_attention_heads`.
        dense_intermediate_size (`int`): SwiGLU width of dense layers. expert_intermediate_size (`int`): width of each
            routed expert. shared_expert_intermediate_size (`int`, *optional*): width of the shared expert of MoE
            layers (`None`: none).
        moe_layer_freq (`list[int]`): one entry per layer, 0 = dense MLP, else MoE.
        num_experts, num_experts_per_tok (`int`): routed experts and top-k.
        moe_router_enable_expert_bias (`bool`): a saved `expert_bias` buffer added to the softmax routing weights
            (the biased weights both choose and weigh the experts, as in the original).
        qk_layernorm (`bool`): RMSNorm of queries/keys per head. clip_qkv (`float`, *optional*): clamp q, k, v.
        partial_rotary_factor (`float`): share of each head rotated by RoPE; rope_theta, rope_scaling,
            max_position_embeddings: RoPE (transformers-4 keys).
        attention_bias (`bool`), rms_norm_eps (`float`), hidden_act (`str`), tie_word_embeddings (`bool`).
        router_aux_loss_coef (`float`), output_router_logits (`bool`): with `output_router_logits=True` the model
            returns each MoE layer's router logits and `aux_loss` (Mixtral's load-balancing loss, unweighted, not
            added to `loss`). The original code collects each layer's hidden states in place of its router logits
            there (its layers never return them), so that path never worked in it; distillation leaves it off.

    Kept for round trips, without effect in the original or here: `norm_topk_prob` (the original hard-codes False),
    `moe_router_score_function` (always softmax), `routed_scaling_factor`, `router_num_group`, `router_topk_group`.
    """

    model_type = "lladamoe"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = -1
    hidden_size: int = -1
    dense_intermediate_size: int = -1
    expert_intermediate_size: int = -1
    shared_expert_intermediate_size: int | None = -1
    num_hidden_layers: int = -1
    num_attention_heads: int = -1
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-05
    use_cache: bool = False
    pad_token_id: int | None = 1
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 50279
    tie_word_embeddings: bool = False
    rope_theta: float = -1
    partial_rotary_factor: float = -1
    rope_scaling: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    clip_qkv: float | None = None
    num_experts_per_tok: int = -1
    num_experts: int = -1
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.01
    norm_topk_prob: bool | None = None
    qk_layernorm: bool | None = None
    moe_layer_freq: list | None = None
    moe_router_enable_expert_bias: bool | None = None
    moe_router_score_function: str | None = None
    routed_scaling_factor: float = 1
    router_num_group: int = -2
    router_topk_group: int = -2

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.moe_layer_freq is None:
            self.moe_layer_freq = []
        if self.rope_scaling is not None and "type" in self.rope_scaling:
            self.rope_scaling["rope_type"] = self.rope_scaling["type"]
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    is_causal = never_causal("LLaDA-MoE attends bidirectionally")


__all__ = ["LLaDAMoEConfig"]
