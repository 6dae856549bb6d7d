"""Adapters: everything model-specific, one class per family, found from the config."""

from __future__ import annotations

from .base import BaseDiffusionAdapter, DiffusionAdapter, position_ids_from_mask
from .block_diffusion import BlockDiffusionAdapter
from .diffusion_gemma import DiffusionGemmaAdapter
from .families import DreamAdapter, GenericMaskedLMAdapter, LLaDAAdapter
from .llada2 import LLaDA2Adapter
from .llada_moe import LLaDAMoEAdapter
from .registry import ADAPTERS, get_adapter, is_causal, register_adapter, resolve_adapter_class

__all__ = [
    "ADAPTERS",
    "BaseDiffusionAdapter",
    "BlockDiffusionAdapter",
    "LLaDA2Adapter",
    "DiffusionAdapter",
    "DiffusionGemmaAdapter",
    "DreamAdapter",
    "GenericMaskedLMAdapter",
    "LLaDAAdapter",
    "LLaDAMoEAdapter",
    "get_adapter",
    "is_causal",
    "position_ids_from_mask",
    "register_adapter",
    "resolve_adapter_class",
]
