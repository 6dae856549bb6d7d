"""LLaDA2.x (LLaDA2.0 `llada2_moe`, LLaDA2.1 `llada21_moe`): block-diffusion MoE LMs, native to transformers 5.

Equal to the published `modeling_llada2_moe.py` (held to it by `tests/golden/gen_llada2.py`), with its parameter names
(`word_embeddings`, `attention.query_key_value`, `attention.dense`, `mlp.gate` with its `expert_bias` buffer,
`mlp.experts.N`, `mlp.shared_experts`) and its calling convention:

- Attention is never causal by itself. The caller passes the block-causal structure as a 4D mask
  `(batch, 1, queries, keys)`: additive floats (0 visible, `-inf` / very negative hidden; LLaDA2's own `generate`
  passes `log` of a 0/1 block mask), or booleans (True visible, its trainers' form). Integer masks read as 1 visible.
- `position_ids` are explicit (LLaDA2's sampler counts them from 0 at the prompt's first token).
- Logits are float32 and at the same position as the token they predict (no shift).

Differences, by design (each documented where it applies): a 2D mask is a key-padding mask (bidirectional); the
original builds a *causal* 4D mask from a 2D one when it contains padding and a bidirectional one when it does not.
With `attn_implementation="eager"` the original inverts 4D float masks as if they were 0/1 (so its own `generate`
attends everywhere under eager); here eager and sdpa read every mask the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from ..modeling_common import (
    RMSNorm,
    RotaryEmbedding,
    SwiGLUMLP,
    apply_rotary_pos_emb,
    attend,
    autocast_dtype,
    init_attention,
    init_decoder_stack,
    init_lm_head,
    legacy_rope_parameters,
    or_config,
    same_position_logits_and_loss,
    with_rope_parameters,
)
from .configuration_llada2_moe import LLaDA2MoeConfig, LLaDA21MoeConfig


class LLaDA2MoeRMSNorm(RMSNorm):
    """RMSNorm with the original's numerics: normalize in float32, cast back, then multiply by the weight."""


def rope_config(config: LLaDA2MoeConfig) -> LLaDA2MoeConfig:
    """A copy of `config` with transformers-5 `rope_parameters` equal to what transformers 4.57 read from the legacy
    `rope_theta` / `rope_scaling` / `partial_rotary_factor` keys (the saved config keeps the legacy keys)."""
    return with_rope_parameters(
        config, {**legacy_rope_parameters(config), "partial_rotary_factor": config.partial_rotary_factor}
    )


class LLaDA2MoeRotaryEmbedding(RotaryEmbedding):
    """RoPE over the first `head_dim * partial_rotary_factor` dims of each head (cos/sin have that width)."""

    rope_view = staticmethod(rope_config)


class LLaDA2MoeMLP(SwiGLUMLP):
    """SwiGLU: the dense layers, each routed expert and the shared expert."""


class LLaDA2MoeGate(nn.Module):
    """The router: sigmoid scores in float32; `expert_bias` (a saved buffer) steers the choice, not the weights.

    Experts form `n_group` groups; a group scores the sum of its two best biased scores; each token keeps its best
    `topk_group` groups and picks its top-k experts among them. The chosen experts' unbiased scores, normalized to
    sum 1 (when k > 1), times `routed_scaling_factor`, weigh their outputs. Not an `nn.Linear` (LoRA never targets it).
    """

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty((self.num_experts, config.hidden_size)))
        self.register_buffer("expert_bias", torch.zeros(self.num_experts))

    def group_limited_topk(self, scores: torch.Tensor) -> torch.Tensor:
        num_tokens = scores.shape[0]
        group_scores = scores.view(num_tokens, self.n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        per_group = self.num_experts // self.n_group
        score_mask = group_mask.unsqueeze(-1).expand(num_tokens, self.n_group, per_group).reshape(num_tokens, -1)
        masked_scores = scores.masked_fill(~score_mask.bool(), float("-inf"))
        return torch.topk(masked_scores, k=self.top_k, dim=-1)[1]

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, hidden) -> expert indices (tokens, k), float32 weights (tokens, k), float32 logits."""
        logits = F.linear(hidden_states.float(), self.weight.float())
        scores = torch.sigmoid(logits)
        topk_idx = self.group_limited_topk(scores + self.expert_bias.float())
        weights = torch.gather(scores, dim=1, index=topk_idx)
        if self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_idx, weights * self.routed_scaling_factor, logits


class LLaDA2MoeSparseMoeBlock(nn.Module):
    """Routed experts plus the shared expert. Each expert runs on the tokens routed to it; a token's expert outputs
    are weighted and summed in float32 in top-k order (the original's order), then cast back.

    With gradients on, every expert runs, on an empty batch when no token chose it, so each expert's parameters get a
    (zero) gradient on every rank: FSDP2 / ZeRO-3 reduce the gradients of the parameters that have one, and a rank
    whose tokens skipped an expert would otherwise reduce fewer tensors than its peers (a collective mismatch)."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.num_experts_per_tok = config.num_experts_per_tok
        self.experts = nn.ModuleList(
            [LLaDA2MoeMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)]
        )
        self.gate = LLaDA2MoeGate(config)
        if config.num_shared_experts is not None:
            self.shared_experts = LLaDA2MoeMLP(config, config.moe_intermediate_size * config.num_shared_experts)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq_len, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        topk_idx, topk_weight, router_logits = self.gate(flat)
        k = topk_idx.shape[1]
        flat_idx = topk_idx.reshape(-1)
        order = flat_idx.argsort()  # slots grouped by expert
        counts = torch.bincount(flat_idx, minlength=len(self.experts)).tolist()
        routed_in = flat[order // k]
        outputs, start = [], 0
        every_expert = torch.is_grad_enabled()  # see `LLaDA2MoeSparseMoeBlock`: no rank may skip an expert in training
        for expert, count in zip(self.experts, counts):
            if count or every_expert:
                outputs.append(expert(routed_in[start : start + count]))
            start += count
        routed_out = torch.cat(outputs) if outputs else routed_in[:0]
        slots = torch.empty_like(routed_out)
        slots[order] = routed_out
        y = (slots.view(-1, k, hidden).float() * topk_weight.unsqueeze(-1)).sum(dim=1).to(hidden_states.dtype)
        y = y.view(batch, seq_len, hidden)
        if hasattr(self, "shared_experts"):
            y = y + self.shared_experts(hidden_states)
        return y, router_logits.view(batch, seq_len, -1)


class LLaDA2MoeAttention(nn.Module):
    """Fused `query_key_value`, optional per-head q/k RMSNorm, partial RoPE, output projection `dense`."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        heads, kv_heads = config.num_attention_heads, config.effective_num_key_value_heads
        init_attention(self, config, layer_idx, config.head_dim, heads, kv_heads)
        self.query_key_value = nn.Linear(
            config.hidden_size,
            (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
            bias=config.use_qkv_bias,
        )
        if config.use_qk_norm:
            self.query_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.key_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, q_len, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(
            batch, q_len, self.num_heads + 2 * self.num_key_value_heads, self.head_dim
        )
        query, key, value = qkv.split([self.num_heads, self.num_key_value_heads, self.num_key_value_heads], dim=-2)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if self.config.use_qk_norm:
            query, key = self.query_layernorm(query), self.key_layernorm(key)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        attn_output, attn_weights = attend(self, query, key, value, attention_mask, **kwargs)
        attn_output = attn_output.reshape(batch, q_len, -1).contiguous()
        return self.dense(attn_output), attn_weights


class LLaDA2MoeDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.attention = LLaDA2MoeAttention(config, layer_idx)
        if config.num_experts is not None and layer_idx >= config.first_k_dense_replace:
            self.mlp = LLaDA2MoeSparseMoeBlock(config)
        else:
            self.mlp = LLaDA2MoeMLP(config, config.intermediate_size)
        self.input_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        hidden_states, _ = self.attention(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        router_logits = None
        if isinstance(hidden_states, tuple):
            hidden_states, router_logits = hidden_states
        return residual + hidden_states, router_logits


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config: LLaDA2MoeConfig
    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # one decoder layer (attention + its whole expert block) is the unit FSDP shards and device_map places
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = False  # the block mask is an arbitrary 4D pattern
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # data-dependent expert dispatch
    _input_embed_layer = "word_embeddings"  # transformers' get/set_input_embeddings find it (on `model` for the LM)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for linear/embedding weights and the router (the original leaves the router
        at kaiming-uniform; published checkpoints overwrite it), ones for RMSNorms, zero `expert_bias`, RoPE buffers."""
        if isinstance(module, LLaDA2MoeGate):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.expert_bias)
        else:  # linear, embedding, RMSNorm (by its name) and RoPE buffers: transformers' default
            super()._init_weights(module)


def additive_attention_mask(
    attention_mask: torch.Tensor | None, query_length: int, key_length: int, dtype: torch.dtype, device
) -> torch.Tensor | None:
    """Any mask the original accepts -> an additive float `(batch, 1, queries, keys)` mask in `dtype`.

    4D floats are additive already (LLaDA2's sampler: `log` of a 0/1 mask, so 0 / -inf) and pass unchanged but for
    the dtype; 4D booleans are True = visible (finfo.min where hidden, as the original); integers read `> 0` visible.
    A 2D `(batch, keys)` mask hides padded keys (bidirectional; see the module docstring).
    """
    if attention_mask is None:
        return None
    mask = attention_mask.to(device)
    if mask.dim() == 2:
        mask = mask[:, None, None, :].bool() if mask.dtype != torch.bool else mask[:, None, None, :]
    elif mask.dim() != 4:
        raise ValueError(
            f"LLaDA2 takes a 4D block mask (batch, 1, queries, keys) or a 2D padding mask; got {tuple(mask.shape)}."
        )
    if mask.shape[-1] < key_length:
        raise ValueError(f"`attention_mask` covers {mask.shape[-1]} keys, the forward attends to {key_length}.")
    if mask.shape[-2] not in (1, query_length):
        raise ValueError(f"`attention_mask` has {mask.shape[-2]} query rows for {query_length} input positions.")
    mask = mask[..., :key_length]
    if mask.dtype == torch.bool or not mask.is_floating_point():
        visible = mask if mask.dtype == torch.bool else mask > 0
        return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
    return mask.to(dtype)


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        init_decoder_stack(
            self,
            config,
            LLaDA2MoeDecoderLayer,
            LLaDA2MoeRMSNorm,
            LLaDA2MoeRotaryEmbedding,
            embeddings="word_embeddings",
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        r"""
        past_key_values / cache (`Cache`, *optional*):
            A KV cache, extended by this forward (LLaDA2's name is `past_key_values`, transformers 5's `cache`).
        attention_mask (`torch.Tensor`, *optional*):
            The block mask, 4D `(batch, 1, queries, keys)`: additive float (0 visible) or bool (True visible); or a 2D
            key-padding mask. None: every position sees every other one.
        position_ids (`torch.LongTensor`, *optional*):
            Defaults to the positions right after the cache.
        output_router_logits (`bool`, *optional*):
            Return each MoE layer's router logits (float32, `(batch, seq, num_experts)`); defaults to the config.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if past_key_values is not None and cache is not None:
            raise ValueError("Pass the KV cache once: as `past_key_values` (LLaDA2's name) or `cache`, not both.")
        past_key_values = cache if cache is not None else past_key_values
        use_cache = or_config(use_cache, self.config, "use_cache")
        output_hidden_states = or_config(output_hidden_states, self.config, "output_hidden_states")
        output_router_logits = or_config(output_router_logits, self.config, "output_router_logits")
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = past_key_values if use_cache or past_key_values is not None else None

        past_seen = cache.get_seq_length() if cache is not None else 0
        query_length = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past_seen, past_seen + query_length, device=inputs_embeds.device)[None]
        mask = additive_attention_mask(
            attention_mask, query_length, past_seen + query_length, autocast_dtype(inputs_embeds), inputs_embeds.device
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = () if output_hidden_states else None
        all_router_logits = () if output_router_logits else None
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, router_logits = decoder_layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                past_key_values=cache,
                **kwargs,
            )
            if output_router_logits and router_logits is not None:
                all_router_logits += (router_logits,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=all_hidden_states,
            router_logits=all_router_logits,
        )


class LLaDA2MoeModelLM(LLaDA2MoePreTrainedModel, GenerationMixin):
    """LLaDA2 with its LM head (the published `LLaDA2MoeModelLM`). Float32 logits at the position they predict."""

    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        init_lm_head(self, config, LLaDA2MoeModel(config))
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor`, *optional*):
            Targets of the same positions (no shift, as the original): mean cross-entropy over labels != -100.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Logits of the last `logits_to_keep` positions only (0: all), or of the given indices.

        `aux_loss` is always None: LLaDA2 balances its experts with `expert_bias`, not an auxiliary loss (as the
        original, which declares the field and never fills it).
        """
        outputs: MoeModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        logits, loss = same_position_logits_and_loss(
            self.lm_head, outputs.last_hidden_state, logits_to_keep, labels, float32=True
        )
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=None,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            router_logits=outputs.router_logits,
        )


class LLaDA21MoeModel(LLaDA2MoeModel):
    """LLaDA2.1's base model (`llada21_moe`): the architecture of [`LLaDA2MoeModel`]."""

    config: LLaDA21MoeConfig
    config_class = LLaDA21MoeConfig


class LLaDA21MoeModelLM(LLaDA2MoeModelLM):
    """LLaDA2.1 with its LM head (`llada21_moe`): the architecture of [`LLaDA2MoeModelLM`]; it differs in its
    sampler (token editing: `trl_t3d.models.llada2.llada2_generate(..., editing_threshold=...)`)."""

    config: LLaDA21MoeConfig
    config_class = LLaDA21MoeConfig


__all__ = ["LLaDA21MoeModel", "LLaDA21MoeModelLM", "LLaDA2MoeModel", "LLaDA2MoeModelLM", "LLaDA2MoePreTrainedModel"]
