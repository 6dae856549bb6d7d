"""DDO training: `DDOConfig`, `DDOTrainer` and the collator that builds states x_t from trajectories."""

from .collator import DDODataCollator, sample_trace_state
from .ddo_config import DDOConfig
from .ddo_trainer import DDOTrainer

__all__ = ["DDOConfig", "DDODataCollator", "DDOTrainer", "sample_trace_state"]
