"""LLaDA's configuration, with the published OLMo-style keys (`d_model`, `n_heads`, `block_type`, ...) unchanged."""

from __future__ import annotations

from transformers import PreTrainedConfig

from ..configuration_common import never_causal


class LLaDAConfig(PreTrainedConfig):
    r"""
    Configuration of LLaDA-8B-Base / -Instruct and LLaDA-1.5 (GSAI-ML). It reads the `config.json` those checkpoints
    publish and writes the same keys back, so a saved student still loads with the original `auto_map` code.
    Defaults are the original `ModelConfig` defaults; every published checkpoint overrides most of them.

    Architecture (what the dense checkpoints use; `LLaDAModelLM` raises `NotImplementedError` for the rest):
        d_model (`int`): hidden size. n_heads (`int`): attention heads. n_kv_heads (`int`, *optional*): key/value
            heads (GQA); `None` means `n_heads`. multi_query_attention (`bool`, *optional*): `True` means one
            key/value head (cannot be combined with a different `n_kv_heads`). n_layers (`int`): blocks.
        mlp_hidden_size (`int`, *optional*): SwiGLU width; `None` means `mlp_ratio * d_model`.
        block_type (`str`): only `"llama"` (separate q/k/v, `ff_proj` gate, `up_proj`, `ff_out`).
        activation_type (`str`): only `"silu"`. layer_norm_type (`str`): only `"rms"`, with `rms_norm_eps`.
        rope (`bool`): must be `True`; rope_theta (`float`): RoPE base. rope_full_precision (`bool`): rotate q/k in
            float32 whatever the model dtype (the published value, `True`), else in the model dtype.
        vocab_size (`int`), embedding_size (`int`, *optional*): rows of `wte` and columns of the logits (defaults
            to `vocab_size`). weight_tying (`bool`): share `wte` and the output projection (`tie_word_embeddings`).
        max_sequence_length (`int`): positions the model was trained on (RoPE itself has no limit).
        attention_dropout, residual_dropout, embedding_dropout (`float`): applied in training mode only.
        alibi, attention_layer_norm, input_emb_norm, scale_logits, include_bias, include_qkv_bias (`bool`),
            block_group_size (`int`), layer_norm_with_affine (`bool`), bias_for_layer_norm (`bool`, *optional*):
            options of the original code that no published dense checkpoint uses; only their published values work.

    Special tokens:
        mask_token_id (`int`): the diffusion mask (`<|mdm_mask|>`, 126336). eos_token_id / pad_token_id (`int`):
            `<|endoftext|>` (126081).

    Kept for the original code, without effect here: `flash_attention` (the kernel is `attn_implementation`:
    `sdpa` by default, `eager`, `flash_attention_2`), `init_device` (transformers places the weights), `precision`,
    `alibi_bias_max`, `attention_layer_norm_with_affine`, `use_cache` (LLaDA has no KV cache). `init_fn`, `init_std`
    and `init_cutoff_factor` choose the initialization of a new model, as in the original.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
    }

    d_model: int = 768
    n_heads: int = 12
    n_kv_heads: int | None = None
    n_layers: int = 12
    mlp_ratio: int = 4
    mlp_hidden_size: int | None = None
    activation_type: str = "swiglu"
    block_type: str = "sequential"
    block_group_size: int = 1
    alibi: bool = False
    alibi_bias_max: float = 8.0
    rope: bool = False
    rope_full_precision: bool = True
    flash_attention: bool = False
    attention_dropout: float = 0.1
    multi_query_attention: bool | None = None
    attention_layer_norm: bool = False
    residual_dropout: float = 0.1
    embedding_dropout: float = 0.1
    input_emb_norm: bool = False
    layer_norm_type: str = "default"
    layer_norm_with_affine: bool = True
    rms_norm_eps: float = 1e-05
    attention_layer_norm_with_affine: bool = True
    max_sequence_length: int = 1024
    rope_theta: float = 10000.0
    include_qkv_bias: bool | None = False
    include_bias: bool = False
    bias_for_layer_norm: bool | None = None
    scale_logits: bool = False
    vocab_size: int = 50257
    embedding_size: int | None = 50304
    weight_tying: bool = True
    eos_token_id: int = 50256
    pad_token_id: int = 50256
    mask_token_id: int | None = 50256
    init_device: str | None = None
    init_fn: str = "normal"
    init_std: float = 0.02
    init_cutoff_factor: float | None = None
    precision: str | None = None
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        if self.architectures is None:
            self.architectures = ["LLaDAModelLM"]
        super().__post_init__(**kwargs)

    @property
    def effective_n_kv_heads(self) -> int:
        """Key/value heads as the original resolves `n_kv_heads` and `multi_query_attention`."""
        if self.n_kv_heads is None:
            return 1 if self.multi_query_attention is True else self.n_heads
        if self.multi_query_attention is None:
            return self.n_kv_heads
        expected = 1 if self.multi_query_attention else self.n_heads
        if self.n_kv_heads != expected:
            raise ValueError(
                f"`multi_query_attention={self.multi_query_attention}` contradicts `n_kv_heads={self.n_kv_heads}`: "
                "set one of them (e.g. `multi_query_attention=None`)."
            )
        return expected

    is_causal = never_causal("LLaDA attends bidirectionally")

    @property
    def num_key_value_heads(self) -> int:
        return self.effective_n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def intermediate_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model


__all__ = ["LLaDAConfig"]
