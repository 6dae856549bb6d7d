"""trl-t3d: few-step diffusion LLMs by trajectory self-distillation with DDO (T3D), as a TRL plugin."""

__version__ = "0.1.0"
