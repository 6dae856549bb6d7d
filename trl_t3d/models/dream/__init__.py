"""Dream (Dream-v0-Base/Instruct-7B; the architecture of Dream-Coder and DiffuCoder), native on transformers 5."""

from __future__ import annotations

from .configuration_dream import DreamConfig
from .modeling_dream import DreamBaseModel, DreamModel, DreamPreTrainedModel
from .tokenization_dream import DreamTokenizer, load_tokenizer


def register() -> None:
    """Register Dream's classes for `model_type` "Dream" with the Auto classes its published `auto_map` names.

    `AutoConfig` -> `DreamConfig`, `AutoModel` -> `DreamModel` (Dream's `auto_map` names no other model class), and
    `AutoTokenizer` -> our native `DreamTokenizer`, so the published tokenizer files load without remote code.
    Idempotent.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    AutoConfig.register(DreamConfig.model_type, DreamConfig, exist_ok=True)
    AutoModel.register(DreamConfig, DreamModel, exist_ok=True)
    AutoTokenizer.register(DreamConfig, tokenizer_class=DreamTokenizer, exist_ok=True)


__all__ = [
    "DreamBaseModel",
    "DreamConfig",
    "DreamModel",
    "DreamPreTrainedModel",
    "DreamTokenizer",
    "load_tokenizer",
    "register",
]
