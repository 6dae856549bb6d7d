"""SDAR / TraDo block-diffusion LMs (Qwen3 architecture), native to transformers 5.

Equal to SDAR's published `modeling_sdar.py` (held to it by `tests/golden/gen_sdar.py`), whose calling conventions it
keeps, because SDAR's callers (its `generate.py`, T3D's trainer, trl_t3d's block-diffusion adapter) rely on them:

- Attention is never causal by itself: with no `attention_mask` every position sees every other one. The block-causal
  structure comes from the caller's mask.
- `attention_mask` marks visible keys with 1 / True (2D `(batch, keys)`, 3D `(batch, queries, keys)` or 4D
  `(batch, 1 or heads, queries, keys)`; any dtype, `> 0` means visible). A numeric mask with no positive entry, which
  the original would read as "no key visible", is read as transformers' additive mask (0 visible, negative hidden).
- A cache is read without being extended when `store_kv=False` (denoising steps of a block), and extended when
  `store_kv=True` (a finished block). Left unset, `store_kv` follows `use_cache` as in any transformers model.

Differences, by design: `fuse_cross_entropy` (a hook for an external fused loss) is ignored and logits are always
returned; single-token steps with a cache honour the mask (the original's flash-attn path ignored it there).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from ..modeling_common import (
    PreNormDecoderLayer,
    RMSNorm,
    RotaryEmbedding,
    SwiGLUMLP,
    apply_rotary_pos_emb,
    attend,
    init_attention,
    init_decoder_stack,
    init_lm_head,
    legacy_rope_parameters,
    same_position_logits_and_loss,
    with_rope_parameters,
)
from .configuration_sdar import SDARConfig


class SDARRMSNorm(RMSNorm):
    """RMSNorm with the numerics of flash-attn's `rms_norm_fn`, which SDAR's code calls: fp32 throughout, one cast."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (x * self.weight.float()).to(hidden_states.dtype)


class SDARMLP(SwiGLUMLP):
    """SwiGLU of `config.intermediate_size`."""


def rope_config(config: SDARConfig) -> SDARConfig:
    """A copy of `config` with transformers-5 `rope_parameters` equal to what transformers 4.52 read from SDAR's legacy
    `rope_theta` / `rope_scaling` keys (the saved config keeps the legacy keys)."""
    params = legacy_rope_parameters(config)
    scaling, rope_type = config.rope_scaling or {}, params["rope_type"]
    max_positions = config.max_position_embeddings
    if rope_type == "yarn" and "original_max_position_embeddings" in scaling:
        # 4.52 derives yarn's factor from the two lengths when both are given (DeepSeek-V3 convention)
        params["factor"] = max_positions / scaling["original_max_position_embeddings"]
    if rope_type == "longrope":
        # 4.52 reads the pretraining length of longrope from a top-level key only, else max_position_embeddings
        original = getattr(config, "original_max_position_embeddings", None)
        params["original_max_position_embeddings"] = original or max_positions
        if original:
            params["factor"] = max_positions / original
    return with_rope_parameters(config, params)


class SDARRotaryEmbedding(RotaryEmbedding):
    """RoPE via transformers' RoPE utilities, configured from SDAR's legacy keys (see `rope_config`)."""

    rope_view = staticmethod(rope_config)


def cached_keys_values(cache: Cache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The keys/values `cache` holds for `layer_idx`, without changing it (None when it holds none)."""
    if layer_idx >= len(cache.layers):
        return None
    layer = cache.layers[layer_idx]
    if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


class SDARAttention(nn.Module):
    """Multi-head attention with per-head q/k RMSNorm (Qwen3); non-causal: the mask alone decides what is seen."""

    def __init__(self, config: SDARConfig, layer_idx: int):
        super().__init__()
        init_attention(
            self, config, layer_idx, config.head_dim, config.num_attention_heads, config.num_key_value_heads
        )
        self.q_proj = nn.Linear(
            config.hidden_size, config.num_attention_heads * self.head_dim, bias=config.attention_bias
        )
        self.k_proj = nn.Linear(
            config.hidden_size, config.num_key_value_heads * self.head_dim, bias=config.attention_bias
        )
        self.v_proj = nn.Linear(
            config.hidden_size, config.num_key_value_heads * self.head_dim, bias=config.attention_bias
        )
        self.o_proj = nn.Linear(
            config.num_attention_heads * self.head_dim, config.hidden_size, bias=config.attention_bias
        )
        self.q_norm = SDARRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = SDARRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        store_kv: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        key_states = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, *position_embeddings)

        if cache is not None:
            if store_kv:
                key_states, value_states = cache.update(key_states, value_states, self.layer_idx)
            elif (past := cached_keys_values(cache, self.layer_idx)) is not None:
                key_states = torch.cat([past[0], key_states], dim=-2)
                value_states = torch.cat([past[1], value_states], dim=-2)

        attn_output, attn_weights = attend(self, query_states, key_states, value_states, attention_mask, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class SDARDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: SDARConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = SDARAttention(config=config, layer_idx=layer_idx)
        self.mlp = SDARMLP(config)
        self.input_layernorm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class SDARPreTrainedModel(PreTrainedModel):
    """Weights initialize by transformers' default `_init_weights`, as the original: normal(0, initializer_range) for
    linear and embedding weights, ones for the RMSNorms, and the RoPE buffers (not saved, so rebuilt after
    `from_pretrained` creates the model on the meta device)."""

    config: SDARConfig
    config_class = SDARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDARDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = False  # the mask is the caller's arbitrary 4D pattern, not a flex block mask
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": SDARDecoderLayer, "attentions": SDARAttention}


def visible_keys_mask(attention_mask: torch.Tensor, query_length: int, key_length: int) -> torch.Tensor:
    """An `attention_mask` -> a boolean `(batch, 1 or heads, queries, keys)` tensor, True where a key is seen.

    Bool masks: True = visible. Numeric masks: SDAR's convention, `> 0` = visible (T3D passes 0/1 integers). A numeric
    mask with no positive entry cannot be meant that way (it would hide every key; the original code then attends
    uniformly to everything), so it is read in transformers' additive convention instead: 0 = visible, negative =
    hidden. The choice is made on the whole tensor, without a host sync. Like the original, the key axis is cut to
    the keys actually attended (cache + chunk).
    """
    if attention_mask.dim() not in (2, 3, 4):
        raise ValueError(
            f"`attention_mask` must be 2D (batch, keys), 3D (batch, queries, keys) or 4D (batch, 1, queries, keys); "
            f"got shape {tuple(attention_mask.shape)}."
        )
    mask = attention_mask
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.shape[-1] < key_length:
        raise ValueError(
            f"`attention_mask` covers {mask.shape[-1]} keys, but the forward attends to {key_length} (cached keys "
            "plus this chunk): give one mask column per cached and new position."
        )
    if mask.shape[-2] not in (1, query_length):
        raise ValueError(f"`attention_mask` has {mask.shape[-2]} query rows for {query_length} input positions.")
    mask = mask[..., :key_length]
    if mask.dtype == torch.bool:
        return mask
    return torch.where((mask <= 0).all(), mask == 0, mask > 0)


class SDARModel(SDARPreTrainedModel):
    def __init__(self, config: SDARConfig):
        super().__init__(config)
        init_decoder_stack(self, config, SDARDecoderLayer, SDARRMSNorm, SDARRotaryEmbedding)
        self.post_init()

    def _attention_mask(self, attention_mask, query_length, key_length, device, dtype):
        """The form the configured attention backend takes: an additive float mask, or a 2D padding mask for flash."""
        if attention_mask is None:
            return None
        visible = visible_keys_mask(attention_mask.to(device), query_length, key_length)
        if "flash" in (self.config._attn_implementation or ""):
            if attention_mask.dim() != 2:
                raise ValueError(
                    "flash attention can only apply a 2D padding mask; SDAR's block masks (3D/4D) need "
                    "`attn_implementation='sdpa'` (the default) or 'eager'."
                )
            return visible[:, 0, 0, :].to(torch.int32)
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        # finfo.min rather than -inf: a row with no visible key attends uniformly instead of giving NaN (as the original)
        return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        store_kv: bool | None = None,
        cache: Cache | None = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        past_key_values / cache (`Cache`, *optional*):
            The KV cache (SDAR's name is `past_key_values`; transformers 5 calls it `cache`; give one of them).
        store_kv (`bool`, *optional*):
            Whether this forward appends its keys/values to the cache (True) or only reads it (False). Defaults to
            `use_cache`.
        cache_position (`torch.LongTensor`, *optional*):
            Positions of this chunk when `position_ids` is not given (defaults to right after the cache).
        """
        if past_key_values is not None and cache is not None:
            raise ValueError("Pass the KV cache once: as `past_key_values` (SDAR's name) or `cache`, not both.")
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(f"The KV cache must be a transformers `Cache` (e.g. DynamicCache), got {type(cache)}.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        store_kv = bool(use_cache) if store_kv is None else store_kv

        past_seen = cache.get_seq_length() if cache is not None else 0
        query_length = inputs_embeds.shape[1]
        if position_ids is None:
            if cache_position is None:
                cache_position = torch.arange(past_seen, past_seen + query_length, device=inputs_embeds.device)
            position_ids = cache_position.unsqueeze(0)
        mask = self._attention_mask(
            attention_mask, query_length, past_seen + query_length, inputs_embeds.device, inputs_embeds.dtype
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                cache=cache,
                store_kv=store_kv,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class SDARForCausalLM(SDARPreTrainedModel, GenerationMixin):
    """SDAR with its LM head. The logit at position i predicts token i (masked-diffusion convention, no shift)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: SDARConfig):
        super().__init__(config)
        init_lm_head(self, config, SDARModel(config))
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
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets of the same positions (no shift, as the original): the loss is the mean cross-entropy over the
            labels that are not -100.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits for the last `logits_to_keep` positions only (0: all), or for the given indices.

        Every other argument (`store_kv`, `cache`, `cache_position`, `output_hidden_states`, ...) goes to
        [`SDARModel.forward`].
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits, loss = same_position_logits_and_loss(self.lm_head, outputs.last_hidden_state, logits_to_keep, labels)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["SDARForCausalLM", "SDARModel", "SDARPreTrainedModel"]
