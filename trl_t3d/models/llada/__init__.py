"""Native LLaDA (GSAI-ML LLaDA-8B-Base / -Instruct, LLaDA-1.5): config, model, tokenizer format."""

from .configuration_llada import LLaDAConfig
from .modeling_llada import LLaDAModel, LLaDAModelLM, LLaDAPreTrainedModel
from .tokenization_llada import MASK_TOKEN, TINY_SPECIAL_TOKEN_IDS, make_tiny_tokenizer


def register() -> None:
    """Register LLaDA with the Auto classes its published `auto_map` names (AutoConfig, AutoModel, AutoModelForCausalLM)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
    AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    AutoModelForCausalLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)


__all__ = [
    "MASK_TOKEN",
    "TINY_SPECIAL_TOKEN_IDS",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAPreTrainedModel",
    "make_tiny_tokenizer",
    "register",
]
