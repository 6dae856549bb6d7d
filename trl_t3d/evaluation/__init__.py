"""Few-step evaluation: tasks (prompts + verifier), verifiers, `evaluate_few_step`, AUP, frontier plots and tables.

lm-evaluation-harness tasks run through `trl_t3d.evaluation.lm_eval` (optional extra `eval`; not imported
here, so the package works without lm-eval)."""

from .evaluate import evaluate_few_step
from .report import aup, aup_of_report, markdown_table, plot_frontier, rows_markdown_table, write_report
from .tasks import Task
from .verifiers import (
    VERIFIERS,
    boxed_verifier,
    exact_match_verifier,
    extract_boxed,
    extract_last_number,
    get_verifier,
    normalize_latex_answer,
    number_verifier,
    one_of_verifier,
    permutation_verifier,
)

__all__ = [
    "VERIFIERS",
    "Task",
    "aup",
    "aup_of_report",
    "boxed_verifier",
    "evaluate_few_step",
    "exact_match_verifier",
    "extract_boxed",
    "extract_last_number",
    "get_verifier",
    "markdown_table",
    "normalize_latex_answer",
    "number_verifier",
    "one_of_verifier",
    "write_report",
    "permutation_verifier",
    "plot_frontier",
    "rows_markdown_table",
]
