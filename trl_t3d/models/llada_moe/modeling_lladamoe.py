"""LLaDA-MoE (inclusionAI LLaDA-MoE-7B-A1B, `lladamoe`): a bidirectional masked-diffusion MoE LM, native to
transformers 5.

Equal to the published `modeling_lladamoe.py` (held to it by `tests/golden/gen_lladamoe.py`), with its parameter names
(`embed_tokens`, `self_attn.{q,k,v,o}_proj`, `self_attn.{q,k}_norm`, `mlp.gate` (the router, a Linear), `mlp.experts.N`,
`mlp.expert_bias`, `shared_expert`) and conventions: no mask means full bidirectional attention, a 2D mask hides padded
keys, logits at the position they predict, in the model's dtype. It has no KV cache (the original refuses one).

The RMSNorm, partial RoPE and attention helpers are the shared ones (`trl_t3d.models.modeling_common`), as are
LLaDA2's: the two originals compute them identically.

Differences, by design: `output_router_logits=True` returns the routers' logits and Mixtral's load-balancing
`aux_loss` (the original collects hidden states in their place, so its path never worked); `labels` give a
same-position cross-entropy (the original takes no labels); 4D masks (bool or additive) are accepted too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from ..llada2.modeling_llada2_moe import LLaDA2MoeRotaryEmbedding, additive_attention_mask
from ..modeling_common import (
    RMSNorm,
    SwiGLUMLP,
    apply_rotary_pos_emb,
    attend,
    autocast_dtype,
    init_attention,
    init_decoder_stack,
    init_lm_head,
    or_config,
    same_position_logits_and_loss,
)
from .configuration_lladamoe import LLaDAMoEConfig


class LLaDAMoERMSNorm(RMSNorm):
    """RMSNorm: normalize in float32, cast back, multiply by the weight (the original's numerics)."""


class LLaDAMoERotaryEmbedding(LLaDA2MoeRotaryEmbedding):
    """RoPE over the first `head_dim * partial_rotary_factor` dims of each head."""


class LLaDAMoEMLP(SwiGLUMLP):
    """SwiGLU of one width: a dense layer's, a routed expert's or the shared expert's."""


class LLaDAMoESparseMoeBlock(nn.Module):
    """Softmax routing (float32) plus the optional `expert_bias`; the top-k biased weights, unnormalized and cast to
    the hidden dtype, weigh the experts; outputs accumulate expert by expert, in the hidden dtype (as the original).
    The router is `gate`, a Linear: LoRA targets must never name it. With gradients on, every expert runs (on an empty
    batch when no token chose it), so that sharded training reduces the same gradients on every rank."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [LLaDAMoEMLP(config, config.expert_intermediate_size) for _ in range(config.num_experts)]
        )
        if config.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(config.num_experts))
        else:
            self.expert_bias = None

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq_len, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        router_logits = self.gate(flat)
        weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        if self.expert_bias is not None:
            weights = weights + self.expert_bias
        weights, selected = torch.topk(weights, self.top_k, dim=-1)
        weights = weights.to(flat.dtype)
        out = torch.zeros_like(flat)
        every_expert = torch.is_grad_enabled()  # each expert gets a gradient on every rank (FSDP2 / ZeRO-3)
        for expert_idx, expert in enumerate(self.experts):
            tokens, slot = torch.where(selected == expert_idx)
            if tokens.numel() == 0 and not every_expert:
                continue
            out.index_add_(0, tokens, (expert(flat[tokens]) * weights[tokens, slot, None]).to(flat.dtype))
        return out.view(batch, seq_len, hidden), router_logits


class LLaDAMoEAttention(nn.Module):
    """q/k/v/o projections, per-head q/k RMSNorm, optional clamp of q/k/v, partial RoPE; bidirectional."""

    def __init__(self, config: LLaDAMoEConfig, layer_idx: int):
        super().__init__()
        init_attention(
            self, config, layer_idx, config.head_dim, config.num_attention_heads, config.num_key_value_heads
        )
        if self.head_dim * self.num_heads != config.hidden_size:
            raise ValueError(f"hidden_size ({config.hidden_size}) must be divisible by heads ({self.num_heads}).")
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)
        if config.qk_layernorm:
            self.q_norm = LLaDAMoERMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LLaDAMoERMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, **kwargs):
        batch, q_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, q_len, -1, self.head_dim)
        key = self.k_proj(hidden_states).view(batch, q_len, -1, self.head_dim)
        value = self.v_proj(hidden_states).view(batch, q_len, -1, self.head_dim)
        if self.config.qk_layernorm:
            query, key = self.q_norm(query), self.k_norm(key)
        if self.config.clip_qkv is not None:
            clip = self.config.clip_qkv
            query, key, value = query.clamp(-clip, clip), key.clamp(-clip, clip), value.clamp(-clip, clip)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        attn_output, attn_weights = attend(self, query, key, value, attention_mask, **kwargs)
        return self.o_proj(attn_output.reshape(batch, q_len, -1).contiguous()), attn_weights


class LLaDAMoEDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LLaDAMoEConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.mlp_type = "dense" if config.moe_layer_freq[layer_idx] == 0 else "moe"
        self.self_attn = LLaDAMoEAttention(config, layer_idx)
        if self.mlp_type == "moe":
            self.mlp = LLaDAMoESparseMoeBlock(config)
        else:
            self.mlp = LLaDAMoEMLP(config, config.dense_intermediate_size)
        self.input_layernorm = LLaDAMoERMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LLaDAMoERMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.shared_expert_intermediate_size is not None and self.mlp_type == "moe":
            self.shared_expert = LLaDAMoEMLP(config, config.shared_expert_intermediate_size)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        normed = self.post_attention_layernorm(hidden_states)
        router_logits = None
        if self.mlp_type == "moe":
            hidden_states, router_logits = self.mlp(normed)
        else:
            hidden_states = self.mlp(normed)
        if hasattr(self, "shared_expert"):
            hidden_states = hidden_states + self.shared_expert(normed)
        return residual + hidden_states, router_logits


class LLaDAMoEPreTrainedModel(PreTrainedModel):
    config: LLaDAMoEConfig
    config_class = LLaDAMoEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDAMoEDecoderLayer"]  # a layer and its whole expert block stay on one device / shard
    _supports_flash_attn = False
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for linear/embedding weights, ones for RMSNorms, zero `expert_bias`, RoPE."""
        if isinstance(module, LLaDAMoESparseMoeBlock) and module.expert_bias is not None:
            init.zeros_(module.expert_bias)
        else:  # linear, embedding, RMSNorm (by its name) and RoPE buffers: transformers' default
            super()._init_weights(module)


def load_balancing_loss(router_logits: tuple, num_experts: int, top_k: int, attention_mask=None) -> torch.Tensor:
    """Mixtral's auxiliary load-balancing loss over the MoE layers' router logits (tokens, experts), unweighted."""
    logits = torch.cat([r.to(router_logits[0].device) for r in router_logits], dim=0)
    probs = F.softmax(logits, dim=-1, dtype=torch.float)
    chosen = F.one_hot(torch.topk(probs, top_k, dim=-1).indices, num_experts).float()
    if attention_mask is None or attention_mask.dim() != 2:
        tokens_per_expert, prob_per_expert = chosen.mean(0), probs.mean(0)
    else:
        valid = attention_mask.reshape(-1).to(probs.device).float().repeat(len(router_logits))
        tokens_per_expert = (chosen * valid[:, None, None]).sum(0) / valid.sum()
        prob_per_expert = (probs * valid[:, None]).sum(0) / valid.sum()
    return (tokens_per_expert * prob_per_expert[None]).sum() * num_experts


class LLaDAMoEModel(LLaDAMoEPreTrainedModel):
    def __init__(self, config: LLaDAMoEConfig):
        super().__init__(config)
        init_decoder_stack(self, config, LLaDAMoEDecoderLayer, LLaDAMoERMSNorm, LLaDAMoERotaryEmbedding)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        r"""
        attention_mask (`torch.Tensor`, *optional*):
            2D `(batch, keys)`, 1 for real tokens (padded keys hidden), or a 4D bool/additive mask. None: full
            bidirectional attention (the original's default).
        use_cache (`bool`, *optional*): must be falsy: LLaDA-MoE has no KV cache (the original asserts the same).
        """
        if use_cache:
            raise ValueError("LLaDA-MoE has no KV cache (its original code refuses one too): pass `use_cache=False`.")
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        output_hidden_states = or_config(output_hidden_states, self.config, "output_hidden_states")
        output_router_logits = or_config(output_router_logits, self.config, "output_router_logits")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device)[None]
        mask = additive_attention_mask(
            attention_mask, length, length, autocast_dtype(inputs_embeds), inputs_embeds.device
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = () if output_hidden_states else None
        all_router_logits = () if output_router_logits else None
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, router_logits = decoder_layer(
                hidden_states, attention_mask=mask, position_embeddings=position_embeddings, **kwargs
            )
            if output_router_logits and router_logits is not None:
                all_router_logits += (router_logits,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, router_logits=all_router_logits
        )


class LLaDAMoEModelLM(LLaDAMoEPreTrainedModel):
    """LLaDA-MoE with its LM head (the published `LLaDAMoEModelLM`)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__(config)
        init_lm_head(self, config, LLaDAMoEModel(config))
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor`, *optional*): same-position targets (-100 ignored): `loss` is their cross-entropy.
        logits_to_keep (`int` or `torch.Tensor`, *optional*): logits of the last N positions only (0: all).
        output_router_logits (`bool`, *optional*): also return the router logits and the (unweighted) `aux_loss`;
            `loss` never includes it.
        """
        output_router_logits = or_config(output_router_logits, self.config, "output_router_logits")
        outputs: MoeModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        logits, loss = same_position_logits_and_loss(self.lm_head, outputs.last_hidden_state, logits_to_keep, labels)
        aux_loss = None
        if output_router_logits and outputs.router_logits:
            aux_loss = load_balancing_loss(
                outputs.router_logits, self.config.num_experts, self.config.num_experts_per_tok, attention_mask
            )
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            router_logits=outputs.router_logits,
        )


__all__ = ["LLaDAMoEModel", "LLaDAMoEModelLM", "LLaDAMoEPreTrainedModel"]
