"""LLaDA (dense) as a native transformers-5 model: a Llama-style transformer with bidirectional attention.

Module and parameter names are those of the published checkpoints (`model.transformer.wte`,
`model.transformer.blocks.N.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out,attn_norm,ff_norm}`,
`model.transformer.ln_f`, `model.transformer.ff_out`), so their safetensors load unchanged. Conventions kept from the
original code: positions are 0..T-1 whatever the padding (LLaDA takes no position ids), a 2D `attention_mask` only
hides padded keys (padded queries still attend to the real tokens), RoPE rotates in float32, logits have
`embedding_size` columns. Tests hold this file equal to the original code with golden fixtures (tests/golden/).

The original has no KV cache (no cache of a bidirectional model is exact); `cache` accepts a transformers `Cache`
anyway, for the approximate prefix/dual caches of Fast-dLLM-style decoding (`trl_t3d.generation.cache`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple, logging

from ..modeling_common import RMSNorm, RotaryEmbedding, apply_rotary_pos_emb, attend, init_attention
from .configuration_llada import LLaDAConfig

logger = logging.get_logger(__name__)

# (option, the only value our class implements) for options of the original code no published dense checkpoint uses.
_SUPPORTED_OPTIONS = (
    ("block_type", "llama"),
    ("activation_type", "silu"),
    ("layer_norm_type", "rms"),
    ("layer_norm_with_affine", True),
    ("rope", True),
    ("alibi", False),
    ("attention_layer_norm", False),
    ("input_emb_norm", False),
    ("scale_logits", False),
    ("include_bias", False),
    ("block_group_size", 1),
)


def check_supported(config: LLaDAConfig) -> None:
    """Fail loudly on original-code options this class does not implement (rather than computing something else)."""
    for option, supported in _SUPPORTED_OPTIONS:
        value = getattr(config, option)
        if value != supported:
            raise NotImplementedError(
                f"LLaDAConfig.{option}={value!r} is not implemented by trl_t3d's native LLaDA (only {supported!r}, "
                "what the published LLaDA-8B / LLaDA-1.5 checkpoints use). Load this checkpoint with its own code: "
                "`use_remote_code=True, trust_remote_code=True` in a transformers-4 environment."
            )
    for option in ("include_qkv_bias", "bias_for_layer_norm"):
        if getattr(config, option):
            raise NotImplementedError(
                f"LLaDAConfig.{option}=True is not implemented by trl_t3d's native LLaDA (the published checkpoints "
                "have no biases)."
            )
    if config.init_fn == "full_megatron":
        raise NotImplementedError(
            "init_fn='full_megatron' is not implemented (the original code cannot initialize LLaDA's llama blocks "
            "with it either); use 'mitchell' (published) or 'normal'."
        )
    if config.d_model % config.n_heads != 0:
        raise ValueError(f"d_model={config.d_model} must be a multiple of n_heads={config.n_heads}.")
    if config.n_heads % config.effective_n_kv_heads != 0:
        raise ValueError(
            f"n_heads={config.n_heads} must be a multiple of the key/value heads ({config.effective_n_kv_heads})."
        )
    if config.embedding_size is not None and config.embedding_size < config.vocab_size:
        raise ValueError(
            f"embedding_size={config.embedding_size} must be at least vocab_size={config.vocab_size} "
            "(it is the number of rows of `wte` and of logit columns)."
        )


class LLaDARMSNorm(RMSNorm):
    """RMS norm computed in float32, cast back to the input's dtype, then scaled (affine, no bias), as the original."""


class LLaDARotaryEmbedding(RotaryEmbedding):
    """Default RoPE (`rope_theta`, head_dim = d_model / n_heads), cos/sin in float32 as the original computes them."""

    float32_tables = True

    @staticmethod
    def rope_view(config: LLaDAConfig) -> LLaDAConfig:
        view = copy.copy(config)
        view.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
        return view


def apply_llada_rope(q, k, cos, sin, full_precision: bool = True):
    """Rotate (B, H, T, D) queries and keys; in float32 when `full_precision` (the original `rope_full_precision`)."""
    compute_dtype = torch.float32 if full_precision else q.dtype
    cos, sin = cos.to(compute_dtype), sin.to(compute_dtype)
    q_embed, k_embed = apply_rotary_pos_emb(q.to(compute_dtype), k.to(compute_dtype), cos, sin)
    return q_embed.to(q.dtype), k_embed.to(k.dtype)


class LLaDALlamaBlock(GradientCheckpointingLayer):
    """One pre-norm block: bidirectional self-attention, then a SwiGLU MLP (`ff_out(silu(ff_proj(x)) * up_proj(x))`).

    The projections live directly on the block, as in the published checkpoints; the block is also the `module`
    handed to transformers' attention functions (hence `is_causal`, `num_key_value_groups`, `scaling`).
    """

    def __init__(self, config: LLaDAConfig, layer_idx: int):
        super().__init__()
        init_attention(
            self, config, layer_idx, config.d_model // config.n_heads, config.n_heads, config.effective_n_kv_heads
        )
        hidden, mlp = config.d_model, config.intermediate_size

        self.attn_norm = LLaDARMSNorm(hidden, eps=config.rms_norm_eps)
        self.ff_norm = LLaDARMSNorm(hidden, eps=config.rms_norm_eps)
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_key_value_heads * self.head_dim, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.ff_proj = nn.Linear(hidden, mlp, bias=False)
        self.up_proj = nn.Linear(hidden, mlp, bias=False)
        self.ff_out = nn.Linear(mlp, hidden, bias=False)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(config.residual_dropout)
        # The output projections' initialization depends on the depth, as in the original (read by `_init_weights`).
        self.attn_out._llada_init = {"layer_id": layer_idx}
        self.ff_out._llada_init = {"layer_id": layer_idx, "residual": True}

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache=None,
        **kwargs,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        normed = self.attn_norm(hidden_states)
        query = self.q_proj(normed).view(batch, length, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(normed).view(batch, length, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(normed).view(batch, length, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_llada_rope(query, key, cos, sin, self.config.rope_full_precision)
        if cache is not None:  # keys/values of the positions the cache holds, with this chunk's own
            key, value = cache.update(key, value, self.layer_idx)

        attn_output, _ = attend(self, query, key, value, attention_mask, **kwargs)
        attn_output = attn_output.reshape(batch, length, -1).contiguous()
        hidden_states = hidden_states + self.dropout(self.attn_out(attn_output))

        normed = self.ff_norm(hidden_states)
        mlp_output = self.ff_out(self.act(self.ff_proj(normed)) * self.up_proj(normed))
        return hidden_states + self.dropout(mlp_output)


class LLaDAPreTrainedModel(PreTrainedModel):
    config: LLaDAConfig
    config_class = LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDALlamaBlock"]
    _supports_flash_attn = True
    _supports_sdpa = True

    def _normal_init(self, weight: torch.Tensor, fan_in: int, layer_id: int | None = None, residual: bool = False):
        """The original `init_weights` for `init_fn` in normal | mitchell | fan_in | kaiming_normal."""
        config = self.config
        if config.init_fn == "normal":
            std = config.init_std / (math.sqrt(2 * config.n_layers) if residual else 1.0)
            if config.init_cutoff_factor is not None:
                cutoff = config.init_cutoff_factor * config.init_std
                init.trunc_normal_(weight, mean=0.0, std=config.init_std, a=-cutoff, b=cutoff)
                if residual:
                    init.copy_(weight, weight / math.sqrt(2 * config.n_layers))
            else:
                init.normal_(weight, mean=0.0, std=std)
        elif config.init_fn == "mitchell":
            std = 1.0 / math.sqrt(fan_in)
            if layer_id is not None:
                std = std / math.sqrt(2 * (layer_id + 1))
            init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        elif config.init_fn == "fan_in":
            init.normal_(weight, mean=0.0, std=1.0 / math.sqrt(fan_in))
        elif config.init_fn == "kaiming_normal":
            init.kaiming_normal_(weight, nonlinearity="relu")
        else:
            raise NotImplementedError(f"LLaDAConfig.init_fn={config.init_fn!r} is not implemented.")

    @torch.no_grad()
    def _init_weights(self, module):
        # Per leaf module, so that weights missing from a checkpoint (or added by a resize) are initialized too.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            fan_in = module.in_features if isinstance(module, nn.Linear) else module.embedding_dim
            self._normal_init(module.weight, fan_in=fan_in, **getattr(module, "_llada_init", {}))
        elif isinstance(module, (LLaDARMSNorm, LLaDARotaryEmbedding)):
            super()._init_weights(module)  # ones; RoPE buffers


class LLaDAModel(LLaDAPreTrainedModel):
    """The transformer (`transformer.{wte, blocks, ln_f, ff_out}`); returns the final normed hidden states."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        check_supported(config)
        embedding_size = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(embedding_size, config.d_model),
                "emb_drop": nn.Dropout(config.embedding_dropout),
                "ln_f": LLaDARMSNorm(config.d_model, eps=config.rms_norm_eps),
                "blocks": nn.ModuleList(LLaDALlamaBlock(config, i) for i in range(config.n_layers)),
                # The output projection sits here in the checkpoints; with `weight_tying` it is tied to `wte`.
                "ff_out": nn.Linear(config.d_model, embedding_size, bias=False),
            }
        )
        self.rotary_emb = LLaDARotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def _attention_mask(self, inputs_embeds, attention_mask, attention_bias, cache=None):
        """What the attention functions take, from the original's `attention_mask` (2D) and `attention_bias` (4D).

        A 2D mask hides padded keys only; an all-ones mask is no mask. `attention_bias` (or a 4D `attention_mask`,
        our extension) is boolean (True = may attend) or additive, merged with the 2D padding mask as the original
        merges them (float32 sum, -inf clamped to the dtype's minimum).
        """
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_bias = attention_mask if attention_bias is None else attention_bias + attention_mask
            attention_mask = None
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                f"attention_mask must be 2D (batch, seq_len) or 4D (batch, 1, seq_len, seq_len), got shape "
                f"{tuple(attention_mask.shape)}."
            )
        if attention_bias is None:  # with a cache, a 2D mask covers the cached keys and the new ones
            return create_bidirectional_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache
            )
        if cache is not None:
            raise ValueError(
                "A 4D `attention_bias` cannot be combined with a KV cache; pass a 2D padding `attention_mask` that "
                "covers the cached positions and the new ones."
            )
        if self.config._attn_implementation not in ("eager", "sdpa"):
            raise ValueError(
                f"A 4D `attention_bias` needs attn_implementation 'sdpa' or 'eager', not "
                f"'{self.config._attn_implementation}' (flash attention takes only a 2D padding mask)."
            )
        length = inputs_embeds.shape[1]
        if attention_bias.dim() == 2:
            attention_bias = attention_bias[None, None]
        minimum = torch.finfo(torch.float32).min
        if attention_bias.dtype in (torch.bool, torch.int8):
            bias = torch.zeros(attention_bias.shape, dtype=torch.float32, device=inputs_embeds.device)
            bias = bias.masked_fill(attention_bias.to(inputs_embeds.device) == 0, minimum)
        else:
            bias = attention_bias.to(device=inputs_embeds.device, dtype=torch.float32)
        bias = bias[:, :, :length, :length]
        if attention_mask is not None and bool((attention_mask == 0).any()):
            keys = attention_mask.to(device=inputs_embeds.device, dtype=torch.float32)[:, None, None, :]
            bias = (bias + (1.0 - keys) * minimum).clamp(min=minimum)
        dtype = inputs_embeds.dtype
        return bias.to(dtype).clamp(min=torch.finfo(dtype).min)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        cache=None,
        **kwargs,
    ) -> BaseModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.transformer.wte(input_ids)
        hidden_states = self.transformer.emb_drop(inputs_embeds)
        if position_ids is None:  # the original: absolute positions 0..T-1, padding or not (after a cache's)
            start = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(start, start + hidden_states.shape[1], device=hidden_states.device)[None]
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        mask = self._attention_mask(hidden_states, attention_mask, attention_bias, cache)

        all_hidden_states = () if output_hidden_states else None
        for block in self.transformer.blocks:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = block(
                hidden_states, attention_mask=mask, position_embeddings=position_embeddings, cache=cache, **kwargs
            )
        hidden_states = self.transformer.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class LLaDAModelLM(LLaDAPreTrainedModel):
    """LLaDA with its output projection: the class the published `auto_map` names for AutoModel / AutoModelForCausalLM.

    `forward` accepts what the original accepted (`input_ids`, `inputs_embeds`, `attention_mask`, `attention_bias`,
    `labels`, `use_cache`, `output_hidden_states`, `return_dict`, ...) plus `position_ids`, `logits_to_keep` and a
    `Cache` object as `cache` / `past_key_values` (approximate caching, see the module docstring).
    """

    _tied_weights_keys = {"model.transformer.ff_out.weight": "model.transformer.wte.weight"}

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.transformer.ff_out = value

    def resize_token_embeddings(self, *args, **kwargs):
        """Resize `wte` and the output projection; `embedding_size` follows so the saved config rebuilds the model."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.config.embedding_size = self.config.vocab_size = embeddings.weight.shape[0]
        return embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = kwargs.pop("cache", None)
        cache = past_key_values if cache is None else cache
        if cache is not None and not isinstance(cache, Cache):
            raise ValueError(
                f"LLaDA takes a transformers `Cache` object as its KV cache, got {type(cache).__name__} (legacy tuples "
                "are not supported)."
            )
        if use_cache and cache is None:
            raise ValueError(
                "LLaDA has no KV cache of its own (every position attends to every other, so none is exact): call it "
                "with `use_cache=False`, or pass the cache to fill (e.g. trl_t3d's DiffusionKVCache) as `cache`."
            )
        if output_attentions:
            raise ValueError("output_attentions is not supported by LLaDA (as in its original code).")
        if labels is not None:
            logger.warning_once(
                "LLaDA computes no loss from `labels` (as in its original code): the loss of a masked diffusion LM "
                "depends on the noise; compute it from `.logits`."
            )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            attention_bias=attention_bias,
            output_hidden_states=output_hidden_states,
            cache=cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.model.transformer.ff_out(hidden_states)
        return CausalLMOutputWithPast(
            logits=logits, hidden_states=outputs.hidden_states, cache=cache if use_cache else None
        )


__all__ = ["LLaDAModel", "LLaDAModelLM", "LLaDAPreTrainedModel"]
