"""Adapter registry: detection from `config.model_type` / `auto_map`, overridable by name or instance."""

from __future__ import annotations

from .base import DiffusionAdapter
from .block_diffusion import BlockDiffusionAdapter, LLaDA2Adapter
from .diffusion_gemma import DiffusionGemmaAdapter
from .families import DreamAdapter, GenericMaskedLMAdapter, LLaDAAdapter

ADAPTERS: dict[str, type[DiffusionAdapter]] = {}


def register_adapter(cls: type[DiffusionAdapter]) -> type[DiffusionAdapter]:
    """Register a family (usable as a class decorator); later registrations win on name clashes."""
    ADAPTERS[cls.name] = cls
    return cls


for _cls in (
    LLaDAAdapter,
    DreamAdapter,
    BlockDiffusionAdapter,
    LLaDA2Adapter,
    DiffusionGemmaAdapter,
    GenericMaskedLMAdapter,
):
    register_adapter(_cls)


def resolve_adapter_class(config, adapter: str | type[DiffusionAdapter] | None = None) -> type[DiffusionAdapter]:
    """The adapter class for `config`: by name when given, else the first family whose model types match."""
    if isinstance(adapter, type) and issubclass(adapter, DiffusionAdapter):
        return adapter
    if isinstance(adapter, str):
        if adapter not in ADAPTERS:
            raise ValueError(f"Unknown adapter '{adapter}'. Supported: {sorted(ADAPTERS)}.")
        return ADAPTERS[adapter]
    for cls in ADAPTERS.values():
        if cls is not GenericMaskedLMAdapter and cls.matches(config):
            return cls
    auto_map = " ".join(str(v) for v in (getattr(config, "auto_map", None) or {}).values()).lower()
    for cls in ADAPTERS.values():
        if any(m.lower() in auto_map for m in cls.model_types):
            return cls
    if GenericMaskedLMAdapter.matches(config):
        return GenericMaskedLMAdapter
    raise ValueError(
        f"Unknown diffusion-LM family (model_type={getattr(config, 'model_type', None)!r}). Supported families: "
        f'{sorted(ADAPTERS)}. For any other bidirectional model with a mask token pass `adapter="generic"` and '
        "`mask_token_id=...`, or register your own with `trl_t3d.register_adapter(MyAdapter)`."
    )


def get_adapter(model_or_config, adapter=None, tokenizer=None, mask_token_id: int | None = None) -> DiffusionAdapter:
    """An adapter instance for a model (or config); an adapter instance passes through unchanged."""
    if isinstance(adapter, DiffusionAdapter):
        return adapter
    config = getattr(model_or_config, "config", model_or_config)
    if adapter is None and mask_token_id is not None and not any(c.matches(config) for c in ADAPTERS.values()):
        adapter = "generic"
    return resolve_adapter_class(config, adapter)(config, tokenizer=tokenizer, mask_token_id=mask_token_id)
