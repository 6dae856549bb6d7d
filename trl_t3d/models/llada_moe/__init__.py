"""Native LLaDA-MoE (`lladamoe`: inclusionAI LLaDA-MoE-7B-A1B-Base / -Instruct), without remote code."""

from .configuration_lladamoe import LLaDAMoEConfig
from .modeling_lladamoe import LLaDAMoEModel, LLaDAMoEModelLM, LLaDAMoEPreTrainedModel


def register() -> None:
    """Register `lladamoe` with the Auto classes the published `auto_map` names."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    AutoConfig.register(LLaDAMoEConfig.model_type, LLaDAMoEConfig, exist_ok=True)
    AutoModel.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)
    AutoModelForCausalLM.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)
    AutoModelForMaskedLM.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)


__all__ = ["LLaDAMoEConfig", "LLaDAMoEModel", "LLaDAMoEModelLM", "LLaDAMoEPreTrainedModel", "register"]
