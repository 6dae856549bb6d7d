"""Decoding: semi-autoregressive block diffusion decoding for every family, with trajectories (`step_map`)."""

from __future__ import annotations

from .cache import DiffusionKVCache
from .config import DIFFUSION_GENERATION_CONFIG_NAME, REMASKING_POLICIES, DiffusionGenerationConfig
from .decode import DiffusionGenerateOutput, diffusion_generate
from .mixin import AutoModelForDiffusionLM, DiffusionLMGenerationMixin, add_diffusion_generation

__all__ = [
    "DIFFUSION_GENERATION_CONFIG_NAME",
    "REMASKING_POLICIES",
    "AutoModelForDiffusionLM",
    "DiffusionGenerateOutput",
    "DiffusionGenerationConfig",
    "DiffusionKVCache",
    "DiffusionLMGenerationMixin",
    "add_diffusion_generation",
    "diffusion_generate",
]
