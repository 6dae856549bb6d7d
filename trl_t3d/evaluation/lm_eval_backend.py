"""The lm-evaluation-harness backend under its former name: the lm-eval model `diffusion_lm`
(`trl_t3d.evaluation.lm_eval.model`) and the `trl-t3d eval` sweep (`trl_t3d.evaluation.lm_eval.sweep`).

Importing it registers `diffusion_lm` with lm-eval, as before."""

from __future__ import annotations

from .lm_eval import (
    DECODING_ARGS,
    DEFAULT_SAMPLING_TEMPERATURE,
    MODEL_NAME,
    DiffusionLMEval,
    evaluate_lm_eval_tasks,
    lm_eval_task_manager,
)

__all__ = [
    "DECODING_ARGS",
    "DEFAULT_SAMPLING_TEMPERATURE",
    "MODEL_NAME",
    "DiffusionLMEval",
    "evaluate_lm_eval_tasks",
    "lm_eval_task_manager",
]
