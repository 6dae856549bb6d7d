"""Native LLaDA2.0 (`llada2_moe`) and LLaDA2.1 (`llada21_moe`): block-diffusion MoE LMs, without remote code."""

from .configuration_llada2_moe import LLaDA2MoeConfig, LLaDA21MoeConfig
from .generation_llada2 import LLaDA2GenerateOutput, llada2_generate
from .modeling_llada2_moe import (
    LLaDA2MoeModel,
    LLaDA2MoeModelLM,
    LLaDA2MoePreTrainedModel,
    LLaDA21MoeModel,
    LLaDA21MoeModelLM,
)


def register() -> None:
    """Register both model types with the Auto classes the published `auto_map` names."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    for config_class, base, head in (
        (LLaDA2MoeConfig, LLaDA2MoeModel, LLaDA2MoeModelLM),
        (LLaDA21MoeConfig, LLaDA21MoeModel, LLaDA21MoeModelLM),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, base, exist_ok=True)
        AutoModelForCausalLM.register(config_class, head, exist_ok=True)
        AutoModelForMaskedLM.register(config_class, head, exist_ok=True)


__all__ = [
    "LLaDA21MoeConfig",
    "LLaDA21MoeModel",
    "LLaDA21MoeModelLM",
    "LLaDA2GenerateOutput",
    "LLaDA2MoeConfig",
    "LLaDA2MoeModel",
    "LLaDA2MoeModelLM",
    "LLaDA2MoePreTrainedModel",
    "llada2_generate",
    "register",
]
