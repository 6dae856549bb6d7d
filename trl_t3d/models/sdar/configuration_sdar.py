"""SDAR configuration: the published `config.json` keys of SDAR / TraDo checkpoints, read and written unchanged."""

from __future__ import annotations

from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import logging

from ..configuration_common import PublishedConfigMixin, full_attention_layer_types

logger = logging.get_logger(__name__)


class SDARConfig(PublishedConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`SDARModel`] / [`SDARForCausalLM`], the block-diffusion LMs SDAR-1.7B/4B/8B-Chat and TraDo-4B/8B
    (Qwen3 architecture). The fields and defaults are those of the published `configuration_sdar.py`, so a Hub
    `config.json` loads and saves back with the same keys and values (`auto_map` included, when present).

    Unlike transformers-5 configs, RoPE stays in the published legacy keys `rope_theta` / `rope_scaling` (nothing is
    rewritten into `rope_parameters`); the model derives its RoPE parameters from them.

    Args:
        vocab_size (`int`, *optional*, defaults to 151936): Vocabulary size.
        hidden_size (`int`, *optional*, defaults to 4096): Width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 22016): Width of the SwiGLU MLP.
        num_hidden_layers (`int`, *optional*, defaults to 32): Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 32): Query heads.
        num_key_value_heads (`int`, *optional*, defaults to 32): Key/value heads (GQA); `None` means MHA.
        head_dim (`int`, *optional*, defaults to 128): Per-head width (need not equal hidden_size / heads).
        hidden_act (`str`, *optional*, defaults to `"silu"`): MLP activation.
        max_position_embeddings (`int`, *optional*, defaults to 32768): Longest sequence the model was trained on.
        initializer_range (`float`, *optional*, defaults to 0.02): Std of the normal weight initialization.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6): RMSNorm epsilon.
        use_cache (`bool`, *optional*, defaults to `True`): Default of `use_cache` in `forward`.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`): Tie `lm_head` to the input embeddings.
        rope_theta (`float`, *optional*, defaults to 10000.0): RoPE base.
        rope_scaling (`dict`, *optional*): RoPE scaling as in transformers 4.52 (`rope_type` or legacy `type`, plus
            its parameters); `None` for plain RoPE, which is what the published checkpoints use.
        attention_bias (`bool`, *optional*, defaults to `False`): Bias in the q/k/v/o projections.
        use_sliding_window (`bool`, *optional*, defaults to `False`): Kept for round trips only: SDAR's attention never
            applies a sliding window (neither the original code nor this one).
        sliding_window (`int`, *optional*, defaults to 4096): Kept for round trips only (see `use_sliding_window`).
        max_window_layers (`int`, *optional*, defaults to 28): Kept for round trips only.
        attention_dropout (`float`, *optional*, defaults to 0.0): Dropout on attention probabilities in training.
        pad_token_id / bos_token_id / eos_token_id (`int`, *optional*): Special token ids, as published.

    Other published keys (e.g. `fuse_cross_entropy`, which asked the original code to skip the logits in training
    for an external fused loss; this class always returns logits) are kept as plain attributes and saved back.
    """

    model_type = "sdar"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.q_norm": "replicated_with_grad_allreduce",
        "layers.*.self_attn.k_norm": "replicated_with_grad_allreduce",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    attention_dropout: float = 0.0
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(f"`rope_scaling` must be a dict or None, got {self.rope_scaling!r}.")
        if self.use_sliding_window:
            logger.warning_once(
                "SDAR config has `use_sliding_window=True`, but SDAR's attention (the original code and this one) "
                "never applies a sliding window: every layer attends over the full sequence."
            )
        super().__post_init__(**kwargs)

    layer_types = property(full_attention_layer_types)


__all__ = ["SDARConfig"]
