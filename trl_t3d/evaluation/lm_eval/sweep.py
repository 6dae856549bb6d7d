"""`trl-t3d eval --lm_eval_tasks ...`: lm-eval tasks swept over tokens-per-step budgets, one report per task in
`evaluate_few_step`'s format (accuracy, NFE, tokens per forward, AUP), with the `diffusion_lm` model of
`lm_eval.model`."""

from __future__ import annotations

from ..evaluate import PER_BUDGET
from .model import MODEL_NAME, DiffusionLMEval


def lm_eval_task_manager(tasks: list[str], include_path: str | None = None):
    """A `TaskManager` that knows `tasks`: only `include_path` when it holds them all (indexing lm-eval's thousands of
    built-in tasks takes 10-20 s), else the built-in tasks too."""
    from lm_eval.tasks import TaskManager

    if include_path:
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if all(task in manager.all_tasks for task in tasks):
            return manager
    manager = TaskManager(include_path=include_path)
    missing = [task for task in tasks if task not in manager.all_tasks]
    if missing:
        raise ValueError(
            f"Unknown lm-eval tasks {missing}. List them with `lm-eval ls tasks`; for your own task YAMLs pass their "
            "folder as `include_path` (`--lm_eval_include_path`)."
        )
    return manager


def _metric_key(task: str, task_results: dict, task_config: dict, metric: str | None) -> str:
    """`metric,filter` to report as accuracy: the given one, else the task's first metric under its first filter."""
    filter_name = (task_config.get("filter_list") or [{}])[0].get("name", "none")
    available = [k for k in task_results if "," in k and "_stderr" not in k]
    if metric is None:
        configured = (task_config.get("metric_list") or [{}])[0].get("metric")
        candidates = [f"{configured},{filter_name}"] if isinstance(configured, str) else []
        candidates += [k for k in available if k.endswith(f",{filter_name}")] + available
        metric = next((k for k in candidates if k in task_results), None)
    elif "," not in metric:
        metric = f"{metric},{filter_name}"
    if metric not in task_results:
        raise ValueError(f"lm-eval task '{task}' reports no metric {metric!r}. Pick one of {sorted(available)}.")
    return metric


def evaluate_lm_eval_tasks(
    model,
    processing_class,
    tasks,
    tokens_per_step=(1, 2, 4, 8),
    *,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    metric: str | None = None,
    apply_chat_template: bool = False,
    batch_size: int = 8,
    model_name: str | None = None,
    confirm_run_unsafe_code: bool = False,
    seed: int = 0,
    **model_args,
) -> list[dict] | None:
    """Run lm-eval tasks at every tokens-per-step budget; one report per task, in `evaluate_few_step`'s format.

    Args:
        model, processing_class: a loaded diffusion LM and its tokenizer.
        tasks (`str` or `list[str]`): lm-eval task names ("gsm8k,humaneval" or a list).
        tokens_per_step: budgets (the x axis of the frontier plot).
        include_path: folder of your own task YAMLs.
        num_fewshot, limit, apply_chat_template, confirm_run_unsafe_code: as in `lm_eval.simple_evaluate`
            (HumanEval and MBPP run generated code: they need `confirm_run_unsafe_code=True` and
            `HF_ALLOW_CODE_EVAL=1`).
        metric (`str`, *optional*): lm-eval's `metric,filter` reported as accuracy (e.g. "exact_match,flexible-extract");
            defaults to each task's first metric under its first filter.
        model_args: any other `DiffusionLMEval` argument (block_length, max_new_tokens, remasking, threshold, ...).

    Returns:
        One report per task, `{model_name, task, metric, num_examples, generation_config, results: [{tokens_per_step,
        accuracy, metrics, nfe, nfe_per_batch, tokens_per_forward, wall_time_s, samples_per_s}], aup}`; `None` on the
        processes other than the main one of a data-parallel run.
    """
    import lm_eval

    from ..report import aup_of_report

    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ValueError(f"No lm-eval task given (got {tasks!r}); e.g. tasks='gsm8k,humaneval'.")
    budgets = [int(k) for k in tokens_per_step]
    if not budgets or any(k < 1 for k in budgets):
        raise ValueError(f"`tokens_per_step` must be positive ints, got {list(tokens_per_step)}.")
    for key in ("tokens_per_step", "steps"):
        if model_args.get(key) is not None:
            raise ValueError(f"`{key}` is set per budget by `tokens_per_step=[...]`; do not pass it in model_args.")
    manager = lm_eval_task_manager(names, include_path)
    model_name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    reports: dict[str, dict] = {}
    for k in budgets:
        lm = DiffusionLMEval(
            model=model, tokenizer=processing_class, tokens_per_step=k, batch_size=batch_size, seed=seed, **model_args
        )
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            num_fewshot=num_fewshot,
            limit=limit,
            apply_chat_template=bool(apply_chat_template),
            confirm_run_unsafe_code=confirm_run_unsafe_code,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        if out is None:  # not the main process
            continue
        speed = lm.speed_metrics()
        settings = lm.get_model_info()[MODEL_NAME]["generation_config"]
        for task, task_results in out["results"].items():
            if task not in out.get("configs", {}):
                continue  # a group: its subtasks are reported one by one
            key = _metric_key(task, task_results, out["configs"][task], metric)
            if not 0.0 <= float(task_results[key]) <= 1.0:
                raise ValueError(
                    f"lm-eval task '{task}' reports {key}={task_results[key]}, not an accuracy in [0, 1]; the frontier "
                    "needs one. Pick an accuracy-like metric (`metric=`, `--lm_eval_metric`) or run this task with "
                    "`python -m trl_t3d.lm_eval`."
                )
            timing = speed.get(task, {})
            seconds = timing.get("wall_time_s", 0.0)  # wall time: the processes decode side by side
            count = out.get("n-samples", {}).get(task, {}).get("effective", timing.get("num_samples", 0))
            report = reports.setdefault(
                task,
                {
                    "model_name": str(model_name),
                    "task": task,
                    "source": "lm_eval",
                    "metric": key,
                    "num_examples": count,
                    "generation_config": {k_: v for k_, v in settings.items() if k_ not in PER_BUDGET},
                    "results": [],
                },
            )
            report["results"].append(
                {
                    "tokens_per_step": k,
                    "accuracy": float(task_results[key]),
                    "metrics": {m: v for m, v in task_results.items() if "," in m},
                    "nfe": timing.get("nfe", 0.0),
                    "nfe_per_batch": timing.get("nfe_per_batch", 0.0),
                    "tokens_per_forward": timing.get("tokens_per_forward", 0.0),
                    "likelihood_forwards": timing.get("likelihood_forwards", 0),
                    "wall_time_s": seconds,
                    "samples_per_s": count / seconds if seconds > 0 else float("inf"),
                }
            )
    if lm.rank != 0:
        return None
    for report in reports.values():
        report["aup"] = aup_of_report(report)
    return list(reports.values())
