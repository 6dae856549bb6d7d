"""LLaDA2.x configuration: the published `config.json` keys of LLaDA2.0 (`llada2_moe`) and LLaDA2.1 (`llada21_moe`)."""

from __future__ import annotations

from transformers.configuration_utils import PreTrainedConfig

from ..configuration_common import PublishedConfigMixin, full_attention_layer_types, never_causal


class LLaDA2MoeConfig(PublishedConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`LLaDA2MoeModel`] / [`LLaDA2MoeModelLM`]: inclusionAI's LLaDA2.0-mini (16B) and -flash (100B),
    block-diffusion MoE models (Ling 2.0 architecture). Fields and defaults are those of the published
    `configuration_llada2_moe.py`, so a Hub `config.json` loads and saves back with the same keys (`auto_map` too);
    published keys this class does not use (e.g. `score_function`, `router_dtype`, `moe_router_enable_expert_bias`)
    are kept as plain attributes and written back.

    Architecture:
        vocab_size (`int`), hidden_size (`int`), num_hidden_layers (`int`), num_attention_heads (`int`).
        num_key_value_heads (`int`): key/value heads (GQA). The published default, 0, means "as many as query heads"
            (LLaDA2.1's convention; LLaDA2.0's code would divide by zero, every checkpoint sets it).
        head_dim (`int`, *optional*): per-head width; `None` means `hidden_size // num_attention_heads` (stored).
        intermediate_size (`int`): SwiGLU width of the dense layers (the first `first_k_dense_replace`).
        hidden_act (`str`): MLP activation. rms_norm_eps (`float`): RMSNorm epsilon.
        use_qkv_bias (`bool`): bias of the fused `query_key_value` projection. use_bias (`bool`): bias of `dense`
            (the attention output projection). use_qk_norm (`bool`): per-head RMSNorm of queries and keys.
        partial_rotary_factor (`float`): share of each head rotated by RoPE (the first `head_dim * factor` dims).
        rope_theta (`float`), rope_scaling (`dict`, *optional*), max_position_embeddings (`int`): RoPE, in the
            transformers-4 keys the checkpoints publish.
        tie_word_embeddings (`bool`): share `lm_head` with `word_embeddings` (published: False).

    Mixture of experts (every layer from `first_k_dense_replace` on):
        num_experts (`int`): routed experts; `None` makes every layer dense. num_experts_per_tok (`int`): top-k.
        moe_intermediate_size (`int`): width of one expert. num_shared_experts (`int`, *optional*): the shared
            expert is one SwiGLU of width `moe_intermediate_size * num_shared_experts`, added to every token's output
            (`None`: no shared expert).
        n_group (`int`), topk_group (`int`): group-limited routing: experts form `n_group` groups, a group scores the
            sum of its two best experts, and each token routes within its best `topk_group` groups.
        routed_scaling_factor (`float`): the normalized top-k weights are multiplied by it.
        Routing is sigmoid scores plus a per-expert `expert_bias` buffer (aux-loss-free balancing): the bias picks
        the experts, the unbiased scores weigh them. The original computes no router auxiliary loss (`aux_loss` is
        always None); `output_router_logits` returns the router logits per MoE layer.

    Kept for round trips, without effect in inference: `embedding_dropout`, `output_dropout`, `norm_head`,
    `use_sliding_window`, `sliding_window`, `max_window_layers` (the original passes `sliding_window` to the
    attention kernel, which ignores it for sdpa/eager). `attention_dropout` applies in training mode, as in the
    original.
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 30592
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 0
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    use_bias: bool = True
    rms_norm_eps: float = 1e-05
    norm_head: bool = False
    tie_word_embeddings: bool = False
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.1
    output_dropout: float = 0.1
    initializer_range: float = 0.02
    max_position_embeddings: int = 16384
    rope_theta: float = 10000.0
    use_cache: bool = True
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    rope_scaling: dict | None = None
    pad_token_id: int | None = 126081
    num_experts: int | None = 16
    num_shared_experts: int | None = 0
    num_experts_per_tok: int = 2
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: int | None = None
    first_k_dense_replace: int = 0
    head_dim: int | None = None
    output_router_logits: bool = False
    partial_rotary_factor: float = 0.5

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(f"`rope_scaling` must be a dict or None, got {self.rope_scaling!r}.")
        heads, kv_heads = self.num_attention_heads, self.effective_num_key_value_heads
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads}).")
        if self.num_experts is not None:
            if self.num_experts % self.n_group:
                raise ValueError(f"num_experts ({self.num_experts}) must be a multiple of n_group ({self.n_group}).")
            if self.num_experts // self.n_group < 2:
                raise ValueError("Group-limited routing scores a group by its two best experts: give each group >= 2.")
            if not 0 < self.topk_group <= self.n_group:
                raise ValueError(f"topk_group ({self.topk_group}) must be in [1, n_group={self.n_group}].")
            if self.num_experts_per_tok > self.topk_group * (self.num_experts // self.n_group):
                raise ValueError("num_experts_per_tok exceeds the experts of the `topk_group` groups a token sees.")
        super().__post_init__(**kwargs)

    @property
    def effective_num_key_value_heads(self) -> int:
        """`num_key_value_heads`, with the published 0 meaning one key/value head per query head."""
        return self.num_key_value_heads or self.num_attention_heads

    layer_types = property(full_attention_layer_types)
    is_causal = never_causal("LLaDA2 attends through the caller's block mask")


class LLaDA21MoeConfig(LLaDA2MoeConfig):
    r"""
    Configuration of LLaDA2.1 (`model_type` "llada21_moe"): the architecture and keys of [`LLaDA2MoeConfig`]; the
    published code differs only in its sampler (token editing) and reads `num_key_value_heads=0` as "one per query
    head", which [`LLaDA2MoeConfig`] does too.
    """

    model_type = "llada21_moe"


__all__ = ["LLaDA21MoeConfig", "LLaDA2MoeConfig"]
