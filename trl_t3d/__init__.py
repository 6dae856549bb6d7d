"""trl-t3d: few-step diffusion LLMs by trajectory self-distillation with DDO (T3D), as a TRL plugin."""

__version__ = "0.1.0"

# DDO training (trl_t3d/trainer/): imported lazily, so `import trl_t3d.adapters` does not pay for importing trl.
_LAZY_TRAINER = ("DDOConfig", "DDOTrainer")


def __getattr__(name):
    if name in _LAZY_TRAINER:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'trl_t3d' has no attribute '{name}'")
