"""Decoding: semi-autoregressive block diffusion decoding for every family, with trajectories (`step_map`)."""

from __future__ import annotations

from .batch import DecodedPrompt, decode_prompts
from .cache import DiffusionKVCache
from .config import DIFFUSION_GENERATION_CONFIG_NAME, REMASKING_POLICIES, DiffusionGenerationConfig
from .decode import DiffusionGenerateOutput, diffusion_generate
from .mixin import AutoModelForDiffusionLM, DiffusionLMGenerationMixin, add_diffusion_generation

__all__ = [
    "DIFFUSION_GENERATION_CONFIG_NAME",
    "REMASKING_POLICIES",
    "AutoModelForDiffusionLM",
    "DecodedPrompt",
    "DiffusionGenerateOutput",
    "DiffusionGenerationConfig",
    "DiffusionKVCache",
    "DiffusionLMGenerationMixin",
    "add_diffusion_generation",
    "decode_prompts",
    "diffusion_generate",
]
