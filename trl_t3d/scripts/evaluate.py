"""`trl-t3d eval`: accuracy and speed of a diffusion LM per tokens-per-step (JSON report + PNG frontier plot).

```bash
trl-t3d eval --model_name_or_path SDAR-4B-Chat-T3D --trust_remote_code --task arithmetic --tokens_per_step 1 2 4 8
trl-t3d eval --model_name_or_path student --dataset_name my_qa.jsonl --answer_column answer --verifier number
```

Prints a table (accuracy and forward passes per budget, AUP) and writes the JSON report and the PNG plot. A LoRA
student (a folder with `adapter_config.json`) is loaded on its base model.
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
            A built-in toy task of `trl_t3d.toy.tasks`; or leave it unset and give `dataset_name` + `answer_column` +
            `verifier` for your own.
        answer_column (`str`, *optional*, defaults to `"answer"`):
            Reference answers of a custom task.
        verifier (`str`, *optional*, defaults to `"number"`):
            How answers are checked: a verifier name of `trl_t3d.evaluation` (e.g. "number", "boxed", "exact").
        tokens_per_step (`list[int]`, *optional*, defaults to `[1, 2, 4, 8]`):
            Budgets to evaluate (the x axis of the frontier plot).
        max_new_tokens (`int`, *optional*):
            Completion budget. `None`: the built-in task's own (8 tokens), else 256.
        block_length (`int`, *optional*):
            Decoding block length; it must be >= every `tokens_per_step`. `None`: the built-in task's own (8), else
            the largest `tokens_per_step`.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts decoded together.
        cache (`str`, *optional*, defaults to `"none"`):
            Fast-dLLM's approximate KV cache for bidirectional models (LLaDA, Dream): `none` (exact), `prefix`, `dual`.
        output_dir (`str`, *optional*, defaults to `"eval"`):
            Where `few_step_eval.json` and `few_step_eval.png` are written (with `lm_eval_tasks`: one report of all
            tasks, `eval_report.json` / `.md` / `.png`).
        lm_eval_tasks (`str`, *optional*):
            lm-evaluation-harness tasks, comma-separated (e.g. `gsm8k,humaneval`), run at every `tokens_per_step`
            through the `diffusion_lm` backend (`pip install 'trl-t3d[eval]'`); with or without `task`.
        lm_eval_include_path (`str`, *optional*):
            Folder of your own lm-eval task YAMLs.
        lm_eval_num_fewshot (`int`, *optional*):
            Few-shot examples (default: each task's own).
        lm_eval_limit (`float`, *optional*):
            Evaluate only the first N examples of each task (a fraction when < 1).
        lm_eval_metric (`str`, *optional*):
            lm-eval's `metric,filter` reported as accuracy (default: each task's first, e.g. `exact_match,strict-match`).
        lm_eval_confirm_run_unsafe_code (`bool`, *optional*, defaults to `False`):
            Allow tasks that execute generated code (HumanEval, MBPP; also set `HF_ALLOW_CODE_EVAL=1`).
    """

    task: str | None = field(default=None, metadata={"help": "Built-in task name; else a dataset + verifier."})
    answer_column: str = field(default="answer", metadata={"help": "Reference answers of a custom task."})
    verifier: str = field(default="number", metadata={"help": "Verifier name for a custom task."})
    tokens_per_step: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={"help": "Budgets."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Completion budget; None: the built-in task's own, else 256."}
    )
    block_length: int | None = field(
        default=None,
        metadata={
            "help": "Decoding block length (>= every tokens_per_step); None: the task's, else the largest budget."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts decoded together."})
    cache: str = field(
        default="none",
        metadata={"help": "Approximate KV cache: none, prefix or dual.", "choices": ["none", "prefix", "dual"]},
    )
    cache_refresh_interval: int | None = field(
        default=None, metadata={"help": "With prefix/dual: full refresh every N forwards of a block (None: once)."}
    )
    output_dir: str = field(default="eval", metadata={"help": "Where the JSON report and PNG plot go."})
    lm_eval_tasks: str | None = field(
        default=None, metadata={"help": "lm-eval tasks, comma-separated (e.g. gsm8k,humaneval); needs the eval extra."}
    )
    lm_eval_include_path: str | None = field(default=None, metadata={"help": "Folder of your own lm-eval task YAMLs."})
    lm_eval_num_fewshot: int | None = field(
        default=None, metadata={"help": "Few-shot examples (default: the task's)."}
    )
    lm_eval_limit: float | None = field(default=None, metadata={"help": "Only the first N examples of each task."})
    lm_eval_metric: str | None = field(
        default=None, metadata={"help": "lm-eval `metric,filter` reported as accuracy (default: the task's first)."}
    )
    lm_eval_confirm_run_unsafe_code: bool = field(
        default=False, metadata={"help": "Allow tasks that run generated code (HumanEval, MBPP)."}
    )


def build_task(script_args: EvalArguments):
    """A built-in task by name, or `Task(dataset prompts, answers, verifier)` for your own data."""
    if script_args.task:
        if script_args.dataset_name:
            raise ValueError(
                "Give either `--task` (a built-in task) or `--dataset_name` (your own prompts and answers), not both."
            )
        kwargs = {"num_examples": script_args.max_samples} if script_args.max_samples is not None else {}
        from ..toy.tasks import get_task  # the command line (top floor) offers the toy tasks by name

        task = get_task(script_args.task, **kwargs)
        if script_args.reasoning_suffix:  # appended to every prompt, as for a dataset task (never dropped)
            import dataclasses

            task = dataclasses.replace(task, prompt_suffix=(task.prompt_suffix or "") + script_args.reasoning_suffix)
        return task
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
        prompt_suffix=script_args.reasoning_suffix,
    )


def decoding_lengths(script_args: EvalArguments, task) -> tuple[int, int]:
    """(max_new_tokens, block_length): explicit values, else the task's, else 256 and the largest budget."""
    budgets = script_args.tokens_per_step
    if not budgets or any(k < 1 for k in budgets):
        raise ValueError(f"`--tokens_per_step` must be positive ints, got {budgets}.")
    block = script_args.block_length or task.block_length or max(budgets)
    if block < max(budgets):
        given = "--block_length" if script_args.block_length else f"the task's block length ({block})"
        raise ValueError(
            f"`--tokens_per_step` {[k for k in budgets if k > block]} exceed {given}: a step commits at most one "
            f"block. Pass `--block_length {max(budgets)}` (or larger), or drop those budgets."
        )
    max_new_tokens = script_args.max_new_tokens or task.max_new_tokens or 256
    if max_new_tokens % block:
        raise ValueError(
            f"`--max_new_tokens` {max_new_tokens} is not a multiple of the block length {block}: pass "
            f"`--max_new_tokens {-(-max_new_tokens // block) * block}` or another `--block_length`."
        )
    return max_new_tokens, block


def main(script_args: EvalArguments, model_args: TeacherArguments):
    """Evaluate, print a table, write `few_step_eval.json` + `few_step_eval.png` to `output_dir`; returns the report."""
    if script_args.lm_eval_tasks:
        return evaluate_with_lm_eval(script_args, model_args)
    model, tokenizer = load_model_and_tokenizer(model_args)
    report = evaluate_task(
        script_args, model, tokenizer, model_args.model_name_or_path, output_dir=script_args.output_dir
    )
    config = report["generation_config"]
    print(
        f"\n{report['task']}: {report['num_examples']} prompts, {config['max_new_tokens']} new tokens in blocks of "
        f"{config['block_length']}.\n"
    )
    print(evaluation.markdown_table({report["model_name"]: report}))
    print(f"\nReport and plot written to {script_args.output_dir}.")
    return report


def evaluate_task(script_args: EvalArguments, model, tokenizer, model_name: str, **kwargs) -> dict:
    """`evaluate_few_step` on the built-in or dataset task of `script_args`, at its decoding lengths."""
    task = build_task(script_args)
    max_new_tokens, block_length = decoding_lengths(script_args, task)
    return evaluation.evaluate_few_step(
        model,
        tokenizer,
        task,
        tokens_per_step=script_args.tokens_per_step,
        max_new_tokens=max_new_tokens,
        block_length=block_length,
        batch_size=script_args.batch_size,
        cache=script_args.cache,
        cache_refresh_interval=script_args.cache_refresh_interval,
        model_name=model_name,
        apply_chat_template=script_args.apply_chat_template,
        **kwargs,
    )


def evaluate_with_lm_eval(script_args: EvalArguments, model_args: TeacherArguments):
    """`--lm_eval_tasks`: lm-eval tasks (and `--task` / `--dataset_name` when given) at every budget, one report.

    Returns the reports (`None` on the other processes of an `accelerate launch` run: the main one writes).
    """
    from ..evaluation.lm_eval.sweep import evaluate_lm_eval_tasks

    model, tokenizer = load_model_and_tokenizer(model_args)
    name = model_args.model_name_or_path
    reports = []
    if script_args.task or script_args.dataset_name:
        reports.append(evaluate_task(script_args, model, tokenizer, name, show_progress=False))
    lm_eval_reports = evaluate_lm_eval_tasks(
        model,
        tokenizer,
        script_args.lm_eval_tasks,
        script_args.tokens_per_step,
        include_path=script_args.lm_eval_include_path,
        num_fewshot=script_args.lm_eval_num_fewshot,
        limit=script_args.lm_eval_limit,
        metric=script_args.lm_eval_metric,
        apply_chat_template=bool(script_args.apply_chat_template),
        confirm_run_unsafe_code=script_args.lm_eval_confirm_run_unsafe_code,
        batch_size=script_args.batch_size,
        model_name=name,
        max_new_tokens=script_args.max_new_tokens,
        block_length=script_args.block_length or max(script_args.tokens_per_step),
        cache=script_args.cache,
        cache_refresh_interval=script_args.cache_refresh_interval,
    )
    if lm_eval_reports is None:
        return None
    reports += lm_eval_reports
    paths = evaluation.write_report(reports, script_args.output_dir)
    print("\n" + evaluation.markdown_table({name: reports}))
    print(f"\nReport written to {paths['json']} (table: {paths['md']}, plot: {paths['png']}).")
    return reports


DATACLASSES = (EvalArguments, TeacherArguments)


def refuse_distill_recipe(config: dict, path: str) -> dict:
    """A `trl-t3d distill` recipe is refused with the `eval` command for the student it writes; `eval`'s own YAML
    passes through."""
    from dataclasses import fields

    from .distill import make_parser as distill_parser
    from .utils import _option_names

    unknown = [key for key in config if key not in {f.name for dtype in DATACLASSES for f in fields(dtype)}]
    if not unknown or not set(unknown) <= set(_option_names(distill_parser())):
        return config  # eval's own YAML; or typos, which the usual error names (with "did you mean")
    student = config.get("output_dir") or "<the distill output_dir>"
    remote = " --trust_remote_code" if config.get("trust_remote_code") else ""
    raise ValueError(
        f"{path} is a `trl-t3d distill` recipe (training settings), which `trl-t3d eval` does not read. Evaluate the "
        f"student it writes with `trl-t3d eval --model_name_or_path {student}{remote} --task arithmetic` (or "
        "`--dataset_name` + `--answer_column`, or `--lm_eval_tasks gsm8k`), or give `--config` a YAML of the "
        "arguments `trl-t3d eval --help` lists."
    )


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    description = "Evaluate accuracy and speed per tokens-per-step (JSON report + PNG frontier plot)."
    return build_parser("eval", DATACLASSES, description, subparsers, prog, read_recipe=refuse_distill_recipe)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
