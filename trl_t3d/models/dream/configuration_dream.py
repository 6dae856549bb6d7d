"""Dream's configuration, read and written with the published `config.json` keys (Qwen2-style)."""

from __future__ import annotations

from transformers import PreTrainedConfig

_ROPE_TYPES_WITH_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")


class DreamConfig(PreTrainedConfig):
    r"""
    Configuration of [`DreamModel`] (Dream-v0-Base/Instruct-7B, Dream-Coder, DiffuCoder): a Qwen2 decoder run with
    bidirectional attention as a masked diffusion LM. The keys are those of the published `config.json`, unchanged,
    so a checkpoint saved from this class keeps loading with Dream's own code (`auto_map` is kept as read).

    Args:
        vocab_size (`int`, *optional*, defaults to 151936): size of the embedding and output vocabulary.
        hidden_size (`int`, *optional*, defaults to 4096): width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 22016): width of the SwiGLU MLP.
        num_hidden_layers (`int`, *optional*, defaults to 32): number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 32): query heads; the head size is
            `hidden_size // num_attention_heads`.
        num_key_value_heads (`int`, *optional*, defaults to 32): key/value heads (grouped-query attention);
            `None` means `num_attention_heads`.
        hidden_act (`str`, *optional*, defaults to `"silu"`): MLP activation.
        max_position_embeddings (`int`, *optional*, defaults to 32768): longest sequence the RoPE tables cover.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal weight init.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6): RMSNorm epsilon.
        use_cache (`bool`, *optional*, defaults to `False`): diffusion decoding re-reads the whole sequence, so no
            key/value cache by default.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`): share `lm_head` with the input embeddings.
        rope_theta (`float`, *optional*, defaults to 10000.0): RoPE base (the published checkpoints use 1e6).
        rope_scaling (`dict`, *optional*): transformers-4 style RoPE scaling (`{"type"/"rope_type": ..., "factor":
            ...}`); `None` (as published) is plain RoPE.
        use_sliding_window (`bool`, *optional*, defaults to `False`), sliding_window (`int`, *optional*, defaults to
            4096), max_window_layers (`int`, *optional*, defaults to 28): kept for the published keys; Dream's
            attention never uses a window (`sliding_window` is stored as `None` unless `use_sliding_window`).
        attention_dropout (`float`, *optional*, defaults to 0.0): dropout on attention probabilities in training.
        mask_token_id (`int`, *optional*, defaults to 151666): the diffusion mask token (`<|mask|>`).
        pad_token_id (`int`, *optional*, defaults to 151643): padding (`<|endoftext|>`); also the embedding's
            `padding_idx`, as in the original code.
        bos_token_id, eos_token_id (`int`, *optional*): as published (151643, `<|endoftext|>`).
    """

    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = False
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    # A plain field (shadowing transformers 5's `rope_scaling` alias of `rope_parameters`): published configs keep
    # transformers-4 `rope_theta` + `rope_scaling`, and we write them back the same way.
    rope_scaling: dict | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    attention_dropout: float = 0.0
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.sliding_window = self.sliding_window if self.use_sliding_window else None
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict):
                raise ValueError(
                    f"`rope_scaling` must be a dict or None (as in Dream's config.json), got {self.rope_scaling!r}."
                )
            # Dream's code accepts the legacy "type" key and records it as "rope_type" (kept as it did).
            if "type" in self.rope_scaling:
                self.rope_scaling["rope_type"] = self.rope_scaling["type"]
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads}): Dream's head size is hidden_size // num_attention_heads."
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of `num_key_value_heads` "
                f"({self.num_key_value_heads}) for grouped-query attention."
            )
        super().__post_init__(**kwargs)

    def rope_parameters_dict(self) -> dict:
        """`rope_theta` + `rope_scaling` in transformers 5's `rope_parameters` form (what its RoPE functions read)."""
        scaling = dict(self.rope_scaling or {})
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        parameters = {**scaling, "rope_type": rope_type, "rope_theta": self.rope_theta}
        parameters.pop("type", None)
        if rope_type in _ROPE_TYPES_WITH_ORIGINAL_LENGTH:
            parameters.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        return parameters


__all__ = ["DreamConfig"]
