"""Adapter registry: detection from `config.model_type` / `auto_map`, overridable by name or instance."""

from __future__ import annotations

from .base import BaseDiffusionAdapter
from .block_diffusion import BlockDiffusionAdapter
from .diffusion_gemma import DiffusionGemmaAdapter
from .families import DreamAdapter, GenericMaskedLMAdapter, LLaDAAdapter
from .llada2 import LLaDA2Adapter
from .llada_moe import LLaDAMoEAdapter

ADAPTERS: dict[str, type[BaseDiffusionAdapter]] = {}


def register_adapter(cls: type[BaseDiffusionAdapter]) -> type[BaseDiffusionAdapter]:
    """Register a family (usable as a class decorator); later registrations win on name clashes."""
    if not (isinstance(cls, type) and issubclass(cls, BaseDiffusionAdapter)):
        raise TypeError(f"Adapters subclass `trl_t3d.adapters.BaseDiffusionAdapter`; got {cls!r}.")
    ADAPTERS[cls.name] = cls
    return cls


for _cls in (
    LLaDAAdapter,
    LLaDAMoEAdapter,
    DreamAdapter,
    BlockDiffusionAdapter,
    LLaDA2Adapter,
    DiffusionGemmaAdapter,
    GenericMaskedLMAdapter,
):
    register_adapter(_cls)


def is_causal(config) -> bool:
    """Whether the model attends causally: transformers reads `config.is_causal` and treats a missing one as True."""
    return getattr(config, "is_causal", True) is not False


def _refuse_causal(config) -> None:
    """The generic family is bidirectional by definition: a causal LM would train and decode nonsense as one."""
    if is_causal(config):
        families = sorted(name for name in ADAPTERS if name != GenericMaskedLMAdapter.name)
        raise ValueError(
            f"This model attends causally (model_type={getattr(config, 'model_type', None)!r}, `config.is_causal` is "
            "not False): a diffusion LM must see its whole canvas, so decoding or training it as one would silently "
            f'give nonsense. If it is a published diffusion LM, name its family: `adapter="..."` (one of {families}). '
            "If it is a bidirectional masked-diffusion model, set `model.config.is_causal = False` (transformers then "
            'attends bidirectionally; the generic family, `adapter="generic"`, takes the mask id from the tokenizer '
            "or `mask_token_id=...`). A new family registers with `trl_t3d.register_adapter(MyAdapter)`."
        )


def resolve_adapter_class(
    config, adapter: str | type[BaseDiffusionAdapter] | None = None
) -> type[BaseDiffusionAdapter]:
    """The adapter class for `config`: by name when given, else the family whose model types match `model_type` (or
    `auto_map`), else the generic family, which is refused for a causal model (named or detected) with the fixes.
    """
    if isinstance(adapter, type) and issubclass(adapter, BaseDiffusionAdapter):
        cls = adapter
    elif isinstance(adapter, str):
        if adapter not in ADAPTERS:
            raise ValueError(f"Unknown adapter '{adapter}'. Supported: {sorted(ADAPTERS)}.")
        cls = ADAPTERS[adapter]
    elif adapter is not None:
        raise TypeError(
            f"`adapter` must be a family name, an adapter class or instance, got {type(adapter).__name__}."
        )
    else:
        cls = _detect(config)
    if issubclass(cls, GenericMaskedLMAdapter):
        _refuse_causal(config)
    return cls


def _detect(config) -> type[BaseDiffusionAdapter]:
    for cls in ADAPTERS.values():
        if cls is not GenericMaskedLMAdapter and cls.matches(config):
            return cls
    auto_map = " ".join(str(v) for v in (getattr(config, "auto_map", None) or {}).values()).lower()
    for cls in ADAPTERS.values():
        if any(m.lower() in auto_map for m in cls.model_types):
            return cls
    # No published family: the generic one, for a bidirectional model (refused with the fixes when causal).
    return GenericMaskedLMAdapter


def get_adapter(
    model_or_config, adapter=None, tokenizer=None, mask_token_id: int | None = None
) -> BaseDiffusionAdapter:
    """An adapter instance for a model (or config); an adapter instance passes through unchanged."""
    if isinstance(adapter, BaseDiffusionAdapter):
        return adapter
    config = getattr(model_or_config, "config", model_or_config)
    return resolve_adapter_class(config, adapter)(config, tokenizer=tokenizer, mask_token_id=mask_token_id)
