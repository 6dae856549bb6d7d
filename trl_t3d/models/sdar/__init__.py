"""Native SDAR / TraDo (`model_type` "sdar"): block-diffusion LMs on the Qwen3 architecture, without remote code."""

from .configuration_sdar import SDARConfig
from .modeling_sdar import SDARForCausalLM, SDARModel, SDARPreTrainedModel
from .tokenization_sdar import make_tiny_tokenizer


def register() -> None:
    """Register the classes for `model_type` "sdar" with the Auto classes the published `auto_map` names."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(SDARConfig.model_type, SDARConfig, exist_ok=True)
    AutoModel.register(SDARConfig, SDARModel, exist_ok=True)
    AutoModelForCausalLM.register(SDARConfig, SDARForCausalLM, exist_ok=True)


__all__ = ["SDARConfig", "SDARForCausalLM", "SDARModel", "SDARPreTrainedModel", "make_tiny_tokenizer", "register"]
