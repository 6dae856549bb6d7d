"""The lm-evaluation-harness backend under its former name: the lm-eval model `diffusion_lm`
(`trl_t3d.evaluation.lm_eval.model`) and the `trl-t3d eval` sweep (`trl_t3d.evaluation.lm_eval.sweep`).

Importing it registers `diffusion_lm` with lm-eval, as before; it exports what `trl_t3d.evaluation.lm_eval` does."""

from __future__ import annotations

from .lm_eval import *  # noqa: F403
from .lm_eval import __all__  # noqa: F401
