"""lm-evaluation-harness for diffusion LMs (optional extra `eval`): `model` is the lm-eval model `diffusion_lm`
(importing it registers it), `sweep` runs lm-eval tasks at several tokens-per-step budgets for `trl-t3d eval`.

Not imported by `trl_t3d.evaluation`, so the package works without lm-eval."""

from __future__ import annotations

from .model import DECODING_ARGS, DEFAULT_SAMPLING_TEMPERATURE, MODEL_NAME, DiffusionLMEval
from .sweep import evaluate_lm_eval_tasks, lm_eval_task_manager

__all__ = [
    "DECODING_ARGS",
    "DEFAULT_SAMPLING_TEMPERATURE",
    "MODEL_NAME",
    "DiffusionLMEval",
    "evaluate_lm_eval_tasks",
    "lm_eval_task_manager",
]
