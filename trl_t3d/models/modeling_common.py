"""The building blocks the native families share: RMSNorm, SwiGLU, RoPE and grouped-query attention helpers.

Each family keeps its own class names (`DreamRMSNorm`, `SDARRotaryEmbedding`, ...) as thin subclasses, so the
parameter names of the published checkpoints, `_no_split_modules` and transformers' name-based weight init
(`"RMSNorm"` / `"RotaryEmbedding"` in the class name) stay as they were; what differs between the originals
(SDAR's norm numerics, LLaDA's float32 RoPE tables, how each config spells its RoPE keys) is overridden there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep


class RMSNorm(nn.Module):
    """RMS norm computed in float32, cast back to the input's dtype, then scaled (affine, no bias): the numerics of
    Dream's, LLaDA's, LLaDA2's and LLaDA-MoE's originals."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class SwiGLUMLP(nn.Module):
    """`down_proj(act(gate_proj(x)) * up_proj(x))`, of `config.intermediate_size` unless a width is given (experts)."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.intermediate_size = intermediate_size if intermediate_size is not None else config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, self.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def legacy_rope_parameters(config) -> dict:
    """transformers 4's `rope_theta` + `rope_scaling` keys as transformers 5's `rope_parameters` (`rope_type` read
    from `rope_type` or the older `type`); an unknown RoPE type raises."""
    scaling = dict(config.rope_scaling or {})
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    scaling.pop("type", None)
    if rope_type not in ("default", *ROPE_INIT_FUNCTIONS):
        raise ValueError(f"Unknown `rope_scaling` type {rope_type!r}; known: {['default', *ROPE_INIT_FUNCTIONS]}.")
    return {**scaling, "rope_type": rope_type, "rope_theta": config.rope_theta}


def with_rope_parameters(config, parameters: dict):
    """A copy of `config` carrying `parameters` as its (standardized, validated) `rope_parameters`; the saved config
    keeps its published keys."""
    view = copy.copy(config)
    view.rope_parameters = parameters
    view.standardize_rope_params()
    view.validate_rope()
    return view


class RotaryEmbedding(nn.Module):
    """RoPE cos/sin tables from transformers' RoPE functions, computed in float32 (autocast off).

    A family says how its published config reads in `rope_view`: a copy carrying transformers 5's `rope_parameters`
    (and `head_dim`), since the published configs keep transformers 4's `rope_theta` / `rope_scaling` keys. With a
    `partial_rotary_factor` only the first `head_dim * factor` dims of a head rotate (cos/sin have that width).
    """

    inv_freq: torch.Tensor
    #: return the tables in float32 (LLaDA) instead of the activations' dtype
    float32_tables = False

    def __init__(self, config, device=None):
        super().__init__()
        self.config = self.rope_view(config)
        self.rope_type = self.config.rope_parameters["rope_type"]
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        inv_freq, self.attention_scaling = self.rope_init_fn(self.config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def rope_view(config):
        """The config transformers' RoPE functions read (`rope_parameters`, `head_dim`); families override it."""
        return config

    @property
    def rope_init_fn(self) -> Callable:
        if self.rope_type == "default":
            return self.compute_default_rope_parameters
        return ROPE_INIT_FUNCTIONS[self.rope_type]

    @staticmethod
    def compute_default_rope_parameters(config, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Plain RoPE: inverse frequencies of `rope_theta` over the rotated part of a head."""
        base = config.rope_parameters["rope_theta"]
        dim = int(config.head_dim * config.rope_parameters.get("partial_rotary_factor", 1.0))
        inv_freq = 1.0 / (
            base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim)
        )
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        device_type = x.device.type if isinstance(x.device.type, str) and x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = (inv_freq.float() @ position_ids[:, None, :].float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        if self.float32_tables:
            return cos, sin
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    """Rotate the first `cos.shape[-1]` dims of (B, H, T, D) q and k (all of them, but for partial RoPE)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    rotary_dim = cos.shape[-1]
    if rotary_dim == q.shape[-1]:
        return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[batch, kv_heads, length, dim] -> [batch, kv_heads * n_rep, length, dim] (grouped-query attention)."""
    batch, num_key_value_heads, length, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, length, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, length, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    """Attention in plain torch. An additive mask (0 visible, very negative hidden) is cut to the keys attended; a
    boolean mask (True visible, Dream's) hides keys, and a query that may see no key outputs zeros, as in SDPA."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    boolean = attention_mask is not None and attention_mask.dtype == torch.bool
    if boolean:
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    elif attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    if boolean:
        attn_weights = attn_weights.masked_fill(~attention_mask.any(dim=-1, keepdim=True), 0.0)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def init_attention(module: nn.Module, config, layer_idx: int, head_dim: int, num_heads: int, num_key_value_heads: int):
    """The attributes transformers' attention backends and caches read from an attention module; never causal (the
    families attend bidirectionally or through the caller's block mask)."""
    module.config = config
    module.layer_idx = layer_idx
    module.head_dim = head_dim
    module.num_heads = num_heads
    module.num_key_value_heads = num_key_value_heads
    module.num_key_value_groups = num_heads // num_key_value_heads
    module.scaling = head_dim**-0.5
    module.attention_dropout = config.attention_dropout
    module.is_causal = False


def attend(module: nn.Module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`module`'s attention through the configured backend (transformers' `ALL_ATTENTION_FUNCTIONS`; the eager one
    above by default), with its `scaling` and, in training, its `attention_dropout`: `(batch, T, heads, dim)` out."""
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        module.config._attn_implementation, eager_attention_forward
    )
    return attention_interface(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=module.attention_dropout if module.training else 0.0,
        scaling=module.scaling,
        **kwargs,
    )


class PreNormDecoderLayer(GradientCheckpointingLayer):
    """The Llama / Qwen block: `x + self_attn(input_layernorm(x))`, then `+ mlp(post_attention_layernorm(.))`.
    Subclasses build the four modules; keyword arguments (`cache`, `store_kv`, ...) go to the attention."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


def init_decoder_stack(model: nn.Module, config, layer_class, norm_class, rotary_class, embeddings="embed_tokens"):
    """A base model's modules, in the published order: token embeddings (padding row `pad_token_id`), decoder layers,
    final norm, RoPE tables."""
    model.padding_idx = config.pad_token_id
    model.vocab_size = config.vocab_size
    setattr(model, embeddings, nn.Embedding(config.vocab_size, config.hidden_size, model.padding_idx))
    model.layers = nn.ModuleList([layer_class(config, layer_idx) for layer_idx in range(config.num_hidden_layers)])
    model.norm = norm_class(config.hidden_size, eps=config.rms_norm_eps)
    model.rotary_emb = rotary_class(config=config)
    model.gradient_checkpointing = False


def init_lm_head(model: nn.Module, config, base_model: nn.Module) -> None:
    """An LM's modules: the base model as `model` and a bias-free `lm_head` over the vocabulary."""
    model.model = base_model
    model.vocab_size = config.vocab_size
    model.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


def same_position_logits_and_loss(
    lm_head: nn.Module, hidden_states: torch.Tensor, logits_to_keep, labels: torch.Tensor | None, float32: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of the kept positions (transformers' `logits_to_keep`; float32 if asked) and, given `labels`, their
    mean cross-entropy in float32 at the same positions (masked-diffusion convention, no shift; -100 ignored)."""
    logits = lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
    if float32:
        logits = logits.float()
    loss = None
    if labels is not None:
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device)
        )
    return logits, loss


def autocast_dtype(embeds: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: autocast's when it is on for the embeddings' device, else theirs (for masks)."""
    if torch.is_autocast_enabled(embeds.device.type):
        return torch.get_autocast_dtype(embeds.device.type)
    return embeds.dtype


def or_config(value, config, name: str):
    """`value` unless it is None, then `config.<name>` (transformers' per-call override of a config default)."""
    return value if value is not None else getattr(config, name)
