"""Config behaviour the native families share: how the published `config.json` files are written back, and the
attention facts transformers reads from a config (`is_causal`, `layer_types`)."""

from __future__ import annotations


class PublishedConfigMixin:
    """Serialise as the published configs do: transformers 4 never wrote unset special token ids, nor do the Hub's
    files, so a saved config keeps the published keys (mix in before `PreTrainedConfig`)."""

    def to_diff_dict(self) -> dict:
        config_dict = super().to_diff_dict()
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if key in config_dict and config_dict[key] is None:
                del config_dict[key]
        return config_dict


def never_causal(refusal: str) -> property:
    """An `is_causal` property that is always False (never serialized); setting it True raises `refusal`."""

    def is_causal(self) -> bool:
        return False

    def set_is_causal(self, value: bool) -> None:
        if value:
            raise ValueError(f"{refusal}: `is_causal` cannot be set to True.")

    return property(is_causal, set_is_causal, doc=f"False: {refusal} (for code that reads `config.is_causal`).")


def full_attention_layer_types(config) -> list[str]:
    """Every layer attends over the full sequence: a config's `layer_types` (`layer_types = property(...)`), read by
    transformers' caches, which would otherwise infer sliding-window layers from `use_sliding_window`."""
    return ["full_attention"] * config.num_hidden_layers
