"""`trl-t3d eval`: accuracy and speed of a diffusion LM per tokens-per-step (JSON report + PNG frontier plot).

```bash
trl-t3d eval --model_name_or_path SDAR-4B-Chat-T3D --trust_remote_code --task gsm8k --tokens_per_step 1 2 4 8
trl-t3d eval --model_name_or_path student --dataset_name my_qa.jsonl --answer_column answer --verifier number
```
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from .. import evaluation
from .utils import DatasetArguments, TeacherArguments, build_parser, load_model_and_tokenizer, load_prompt_dataset


@dataclass
class EvalArguments(DatasetArguments):
    """
    What to evaluate and where to write it. Dataset fields (for a custom task) as in `DatasetArguments`.

    Parameters:
        task (`str`, *optional*):
            A built-in task of `trl_t3d.evaluation`; or leave it unset and give `dataset_name` + `answer_column` +
            `verifier` for your own.
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Reference answers of a custom task.
        verifier (`str`, *optional*, defaults to `"number"`):
            How answers are checked: a verifier name of `trl_t3d.evaluation` (e.g. "number", "boxed", "exact").
        tokens_per_step (`list[int]`, *optional*, defaults to `[1, 2, 4, 8]`):
            Budgets to evaluate (the x axis of the frontier plot).
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Completion budget.
        block_length (`int`, *optional*, defaults to `4`):
            Decoding block length.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts decoded together.
        output_dir (`str`, *optional*, defaults to `"eval"`):
            Where `few_step_eval.json` and `few_step_eval.png` are written.
    """

    task: str | None = field(default=None, metadata={"help": "Built-in task name; else a dataset + verifier."})
    answer_column: str = field(default="answer", metadata={"help": "Reference answers of a custom task."})
    verifier: str = field(default="number", metadata={"help": "Verifier name for a custom task."})
    tokens_per_step: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={"help": "Budgets."})
    max_new_tokens: int = field(default=256, metadata={"help": "Completion budget."})
    block_length: int = field(default=4, metadata={"help": "Decoding block length."})
    batch_size: int = field(default=8, metadata={"help": "Prompts decoded together."})
    output_dir: str = field(default="eval", metadata={"help": "Where the JSON report and PNG plot go."})


def build_task(script_args: EvalArguments):
    """A built-in task by name, or `Task(dataset prompts, answers, verifier)` for your own data."""
    if script_args.task:
        return evaluation.get_task(script_args.task)
    if not script_args.dataset_name:
        raise ValueError("Give `--task <built-in name>` or `--dataset_name` with `--answer_column` and `--verifier`.")
    dataset = load_prompt_dataset(script_args)
    if script_args.answer_column not in dataset.column_names:
        raise ValueError(
            f"No answer column '{script_args.answer_column}' in the dataset (columns: {sorted(dataset.column_names)})."
            " Pass `--answer_column`."
        )
    if script_args.prompt_column not in dataset.column_names:
        raise ValueError(
            f"No prompt column '{script_args.prompt_column}' in the dataset (columns: {sorted(dataset.column_names)})."
            " Pass `--prompt_column`."
        )
    return evaluation.Task.from_dataset(
        dataset,
        prompt_column=script_args.prompt_column,
        answer_column=script_args.answer_column,
        verifier=script_args.verifier,
        name=os.path.basename(os.path.normpath(script_args.dataset_name)),
    )


def main(script_args: EvalArguments, model_args: TeacherArguments):
    """Evaluate, write `few_step_eval.json` + `few_step_eval.png` to `output_dir`; returns the report."""
    task = build_task(script_args)
    model, tokenizer = load_model_and_tokenizer(model_args)
    os.makedirs(script_args.output_dir, exist_ok=True)
    report = evaluation.evaluate_few_step(
        model,
        tokenizer,
        task,
        tokens_per_step=script_args.tokens_per_step,
        max_new_tokens=script_args.max_new_tokens,
        block_length=script_args.block_length,
        batch_size=script_args.batch_size,
        output_dir=script_args.output_dir,
    )
    print(f"Few-step evaluation written to {script_args.output_dir}.")
    return report


DATACLASSES = (EvalArguments, TeacherArguments)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    description = "Evaluate accuracy and speed per tokens-per-step (JSON report + PNG frontier plot)."
    return build_parser("eval", DATACLASSES, description, subparsers, prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
