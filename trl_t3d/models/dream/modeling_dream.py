"""Dream (Dream-v0 7B, Dream-Coder, DiffuCoder) as a transformers-5 model.

Dream is a Qwen2 decoder (q/k/v bias, RMSNorm, SwiGLU, RoPE) trained as a masked diffusion LM: attention is
bidirectional and, because it was initialised from an autoregressive model, the logit at position i predicts the
token at i + 1 (callers shift; the model returns the logits unshifted, as the original does). Parameter names,
config keys and the attention-mask conventions are those of the published remote code, so its checkpoints load
unchanged and a checkpoint saved here loads back into that code.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import GENERATION_CONFIG_NAME, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import is_flash_attention_requested
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
)
from .configuration_dream import DreamConfig


def dream_attention_mask(attention_mask: torch.Tensor | str | None) -> torch.Tensor | None:
    """Dream's mask conventions as a boolean `[batch, 1 | heads, query, key]` mask (True = attend); None = full.

    As the original `DreamModel.forward`: `None`, `"full"` or a mask with no zero entry mean full attention; a 2D
    padding mask `[batch, length]` becomes the pairwise mask (a token attends to a key iff both are real, the form
    Dream's `diffusion_generate` builds); 3D/4D masks are read as booleans (non-zero = attend; a 3D mask is
    `[batch, query, key]`).
    """
    if attention_mask is None:
        return None
    if isinstance(attention_mask, str):
        if attention_mask == "full":
            return None
        raise ValueError(f"attention_mask={attention_mask!r}: the only string Dream accepts is 'full'.")
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"attention_mask must be None, 'full' or a tensor, got {type(attention_mask).__name__}: pass a 2D padding "
            "mask or a boolean [batch, 1, query, key] mask."
        )
    if attention_mask.dim() not in (2, 3, 4):
        raise ValueError(
            f"Unexpected attention_mask shape {tuple(attention_mask.shape)}: Dream takes a 2D padding mask "
            "[batch, length] or a boolean [batch, 1, query, key] mask."
        )
    if not torch.any(attention_mask == 0):
        return None
    if attention_mask.dim() == 2:
        valid = attention_mask.bool()
        return valid[:, None, :, None] & valid[:, None, None, :]
    if attention_mask.is_floating_point() and torch.any(attention_mask < 0):
        raise ValueError(
            "Dream's 3D/4D attention masks are boolean (non-zero = attend), but this one has negative entries: it looks "
            "like an additive mask (0 = attend, -inf = blocked), which Dream would read inverted. Pass `mask == 0` "
            "(or a bool mask) instead."
        )
    mask = attention_mask.bool()
    return mask[:, None] if mask.dim() == 3 else mask


def flash_padding_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The `[batch, key]` padding mask flash attention takes, from a boolean `[batch, 1, query, key]` Dream mask.

    Flash attention drops padded positions as queries too, so this is exact for every real query of a padding mask
    (key-only or pairwise); padded queries then output zeros. Any other pattern raises.
    """
    if mask is None:
        return None
    keys = mask.any(dim=-2)  # [batch, heads, key]: a key any query may see
    if mask.shape[1] != 1 or not bool(((mask == keys[:, :, None, :]) | ~mask.any(-1, keepdim=True)).all()):
        raise ValueError(
            "flash_attention_2 supports padding masks only (every query sees the same keys). Use "
            "attn_implementation='sdpa' or 'eager' for other 4D masks."
        )
    return keys[:, 0].to(torch.int32)


class DreamRMSNorm(RMSNorm):
    """RMS norm computed in float32, cast back to the input's dtype, then scaled (affine, no bias), as the original."""


class DreamRotaryEmbedding(RotaryEmbedding):
    """RoPE tables from transformers' RoPE functions, fed Dream's `rope_theta` / `rope_scaling` in their v5 form."""

    @staticmethod
    def rope_view(config: DreamConfig) -> DreamConfig:
        """A copy carrying both the published keys and `rope_parameters` (what transformers 5's RoPE functions read);
        the head size is `hidden_size // num_attention_heads`."""
        view = copy.copy(config)
        view.rope_parameters = config.rope_parameters_dict()
        view.head_dim = config.hidden_size // config.num_attention_heads
        rope_type = view.rope_parameters["rope_type"]
        if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(
                f"rope_scaling type {rope_type!r} is unknown; use one of {['default', *ROPE_INIT_FUNCTIONS]}."
            )
        return view


class DreamAttention(nn.Module):
    """Qwen2 attention (q/k/v bias, grouped-query), bidirectional: `is_causal = False`."""

    def __init__(self, config: DreamConfig, layer_idx: int):
        super().__init__()
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        init_attention(self, config, layer_idx, config.hidden_size // heads, heads, kv_heads)
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attn_output, attn_weights = attend(self, query_states, key_states, value_states, attention_mask, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class DreamMLP(SwiGLUMLP):
    """SwiGLU of `config.intermediate_size`."""


class DreamDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: DreamConfig, layer_idx: int):
        super().__init__()
        self.self_attn = DreamAttention(config=config, layer_idx=layer_idx)
        self.mlp = DreamMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class DreamPreTrainedModel(PreTrainedModel):
    """Weights initialize by transformers' default `_init_weights`, which is the original's init: normal(0,
    initializer_range) weights, zero biases and padding row, RMSNorms at one (and the RoPE buffers rebuilt)."""

    config: DreamConfig
    config_class = DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _can_record_outputs = {"hidden_states": DreamDecoderLayer, "attentions": DreamAttention}


class DreamBaseModel(DreamPreTrainedModel):
    """The decoder stack (`model.` in the published parameter names): embeddings, layers, final norm."""

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        if config.pad_token_id is not None and not 0 <= config.pad_token_id < config.vocab_size:
            raise ValueError(
                f"pad_token_id={config.pad_token_id} is outside the vocabulary (vocab_size={config.vocab_size}); "
                "Dream uses it as the embedding's padding row: set a pad_token_id below vocab_size (or None)."
            )
        init_decoder_stack(self, config, DreamDecoderLayer, DreamRMSNorm, DreamRotaryEmbedding)
        self.post_init()

    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | str | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        attention_mask (`torch.Tensor` or `"full"`, *optional*):
            Dream's conventions (see `dream_attention_mask`): `None`/`"full"` for full attention, a 2D padding mask,
            or a boolean `[batch, 1, query, key]` mask.
        use_cache (`bool`, *optional*):
            Return a key/value cache. Unlike most models, `None` means no cache whatever `config.use_cache` says:
            the original never returned one, and diffusion decoding re-reads the whole canvas each step.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        mask = dream_attention_mask(attention_mask)
        if mask is not None:
            mask = (
                flash_padding_mask(mask)
                if is_flash_attention_requested(self.config)
                else mask.to(inputs_embeds.device)
            )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                cache=cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class DreamModel(DreamPreTrainedModel):
    """Dream with its vocabulary head (the published `DreamModel`, loaded with `AutoModel`).

    The logit at position i predicts the token at i + 1 (Dream was initialised from an autoregressive model); the
    model returns them unshifted, exactly as the original, and callers shift (trl_t3d's `DreamAdapter` does).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # tied only if config.tie_word_embeddings
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        init_lm_head(self, config, DreamBaseModel(config))
        self.post_init()

    def get_decoder(self) -> DreamBaseModel:
        return self.model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, plus the `generation_config.json` Dream's own `from_pretrained` requires.

        Dream's remote code refuses a directory without that file, and a model without `GenerationMixin` does not
        write one; the file written holds the special-token ids, as the published one does (an existing file is
        kept).
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        path = os.path.join(save_directory, GENERATION_CONFIG_NAME)
        if kwargs.get("is_main_process", True) and not os.path.isfile(path):
            GenerationConfig(
                _from_model_config=True,
                bos_token_id=self.config.bos_token_id,
                eos_token_id=self.config.eos_token_id,
                pad_token_id=self.config.pad_token_id,
            ).save_pretrained(save_directory)

    def set_decoder(self, decoder: DreamBaseModel) -> None:
        self.model = decoder

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @deprecate_kwarg("num_logits_to_keep", "5.0.0", new_name="logits_to_keep")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | str | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        The positional order is the original's (`model(x, attention_mask, position_ids)` is how Dream's
        `diffusion_generate` calls it). `labels` give the original's loss: `self.loss_function` (next-token cross
        entropy, labels shifted inside), which matches the unshifted logits.
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["DreamBaseModel", "DreamModel", "DreamPreTrainedModel"]
