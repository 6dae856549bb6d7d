"""trl-t3d: few-step diffusion LLMs by trajectory self-distillation with DDO (T3D), as a TRL plugin."""

from .models import register_native_models
from .version import __version__  # noqa: F401

# LLaDA, Dream and SDAR checkpoints load with our native classes through transformers' Auto classes.
register_native_models()

from .adapters import BaseDiffusionAdapter, DiffusionAdapter, get_adapter, register_adapter  # noqa: E402, F401
from .evaluation import (  # noqa: E402, F401
    Task,
    boxed_verifier,
    evaluate_few_step,
    exact_match_verifier,
    number_verifier,
    one_of_verifier,
    permutation_verifier,
)
from .generation import (  # noqa: E402, F401
    AutoModelForDiffusionLM,
    DiffusionGenerateOutput,
    DiffusionGenerationConfig,
    DiffusionKVCache,
    DiffusionLMGenerationMixin,
    add_diffusion_generation,
    diffusion_generate,
)
from .objectives import LossTerm, StepContext, TermOutput, register_loss_term, register_objective  # noqa: E402, F401
from .resolved import DiffusionLM, load_diffusion_lm  # noqa: E402, F401

# DDO training (trl_t3d/trainer/): imported lazily, so `import trl_t3d.adapters` does not pay for importing trl.
_LAZY_TRAINER = ("DDOConfig", "DDOTrainer")
# Trajectory collection and the Hub (trl_t3d/collect.py, trl_t3d/hub.py): lazy too (they import datasets/accelerate).
_LAZY_OTHER = {
    "collect_trajectories": "collect",
    "push_student_to_hub": "hub",
    "push_trajectories_to_hub": "hub",
    "trajectory_dataset_card": "hub",
}


def __getattr__(name):
    if name in _LAZY_TRAINER:
        from . import trainer

        return getattr(trainer, name)
    if name in _LAZY_OTHER:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_OTHER[name]}", __name__), name)
    raise AttributeError(f"module 'trl_t3d' has no attribute '{name}'")
