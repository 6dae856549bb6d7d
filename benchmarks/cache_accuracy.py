"""What Fast-dLLM's approximate KV cache costs in accuracy, and how often it changes a teacher's trajectories.

On the toy teacher of `make demo` (a bidirectional Llama pretrained from scratch on the built-in tasks) and, when given,
the T3D student distilled from it: accuracy, forwards per sample, tokens per forward and AUP at 1, 2 and 4 tokens per
step in blocks of 4 (the demo's evaluation), with `cache="none" | "prefix" | "dual"`. Then the teacher's trajectories
at one token per step (the collection setting) with each cache: the share of prompts whose completion, and whose
step map, differ from exact decoding.

    OMP_NUM_THREADS=1 .venv/bin/python -m trl_t3d.toy.demo --output_dir /tmp/demo     # teacher/ and student/ (~5 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cache_accuracy.py --teacher_dir /tmp/demo/teacher \\
        --student_dir /tmp/demo/student                          # writes benchmarks/results/cache_accuracy.json

Without `--teacher_dir` the teacher is pretrained here (as the demo does, about 5 minutes on one core). A task-suite
teacher (benchmarks/task_suite.py --cache_dir C keeps them) on all five tasks, canvas 16:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cache_accuracy.py --teacher_dir C/seed0-.../teacher \
        --tasks arithmetic reverse permutation_skewed two_way_sort phrase --max_new_tokens 16 \
        --output benchmarks/results/cache_accuracy_suite_seed0.json

Every cache runs as Fast-dLLM does (refreshed at each block's first forward) and with `cache_refresh_interval` r
(`--refresh_intervals`, a full refresh every r forwards of a block).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cache_accuracy.json")
MODES = ("none", "prefix", "dual")
TASKS = ("arithmetic", "permutation_skewed")


def variants(refresh_intervals) -> list[tuple[str, str, int | None]]:
    """(name, cache, cache_refresh_interval): each mode as Fast-dLLM runs it, then with every refresh interval."""
    out = [(mode, mode, None) for mode in MODES]
    out += [(f"{mode}/refresh{r}", mode, r) for r in refresh_intervals for mode in ("prefix", "dual")]
    return out


def load(directory):
    from transformers import AutoTokenizer

    from trl_t3d import AutoModelForDiffusionLM

    tokenizer = AutoTokenizer.from_pretrained(directory)
    return AutoModelForDiffusionLM.from_pretrained(directory, processing_class=tokenizer).eval(), tokenizer


def accuracy_by_cache(model, tokenizer, tasks, budgets, block_length, max_new_tokens=None, refresh_intervals=()):
    """{task: {variant: {accuracy, nfe, tokens_per_forward per budget, aup}}} and the exact-vs-cached gaps."""
    from trl_t3d.evaluation import evaluate_few_step

    table = {}
    for task in tasks:
        rows = {}
        for name, mode, refresh in variants(refresh_intervals):
            report = evaluate_few_step(
                model,
                tokenizer,
                task,
                budgets,
                # a loaded model's own default (128) would override the task's
                max_new_tokens=max_new_tokens or task.max_new_tokens,
                block_length=block_length,
                temperature=0.0,
                remasking="low_confidence",
                batch_size=128,
                cache=mode,
                cache_refresh_interval=refresh,
                show_progress=False,
                num_samples_logged=0,
            )
            rows[name] = {
                "accuracy_pct": {r["tokens_per_step"]: round(100 * r["accuracy"], 1) for r in report["results"]},
                "nfe": {r["tokens_per_step"]: round(r["nfe"], 2) for r in report["results"]},
                "tokens_per_forward": {
                    r["tokens_per_step"]: round(r["tokens_per_forward"], 2) for r in report["results"]
                },
                "aup": round(report["aup"], 1),
            }
        for name, _, _ in variants(refresh_intervals)[1:]:
            rows[f"{name}_minus_none"] = {
                k: round(rows[name]["accuracy_pct"][k] - rows["none"]["accuracy_pct"][k], 1) for k in budgets
            }
        table[task.name] = rows
    return table


def trajectory_agreement(model, tokenizer, tasks, block_length, max_new_tokens=None):
    """Share of prompts whose teacher trajectory (1 token per step) differs between exact and cached decoding."""
    from datasets import Dataset

    from trl_t3d import DiffusionGenerationConfig, collect_trajectories

    out = {}
    for task in tasks:
        prompts = Dataset.from_dict({"prompt_ids": task.prompt_ids(tokenizer)})
        collected = {}
        for mode in MODES:
            config = DiffusionGenerationConfig(
                max_new_tokens=max_new_tokens or task.max_new_tokens,
                block_length=block_length,
                tokens_per_step=1,
                cache=mode,
            )
            start = time.perf_counter()
            collected[mode] = collect_trajectories(
                model, tokenizer, prompts, config, batch_size=128, prompt_column="prompt_ids", show_progress=False
            )
            collected[mode + "_seconds"] = round(time.perf_counter() - start, 2)
        exact = collected["none"]
        row = {"num_prompts": len(prompts), "seconds_none": collected["none_seconds"]}
        for mode in ("prefix", "dual"):
            cached = collected[mode]
            tokens = sum(a != b for a, b in zip(exact["completion_ids"], cached["completion_ids"]))
            steps = sum(a != b for a, b in zip(exact["step_map"], cached["step_map"]))
            row[mode] = {
                "completions_differ_pct": round(100 * tokens / len(prompts), 1),
                "step_maps_differ_pct": round(100 * steps / len(prompts), 1),
                "seconds": collected[mode + "_seconds"],
            }
        out[task.name] = row
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_dir", help="a saved toy teacher (make demo's output_dir/teacher)")
    parser.add_argument("--student_dir", help="a saved T3D student (make demo's output_dir/student)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_eval", type=int, default=256, help="test prompts per task")
    parser.add_argument("--num_trajectories", type=int, default=512, help="training prompts per task")
    parser.add_argument("--block_length", type=int, default=4)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="built-in tasks (trl_t3d.toy.tasks)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="canvas; default: each task's own")
    parser.add_argument(
        "--refresh_intervals", type=int, nargs="*", default=[2], help="cache_refresh_interval values to add"
    )
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from trl_t3d.toy.tasks import get_task

    started = time.perf_counter()
    if args.teacher_dir:
        teacher, tokenizer = load(args.teacher_dir)
        teacher_source = args.teacher_dir
    else:
        from trl_t3d.toy.pretraining import make_toy_teacher

        teacher, tokenizer = make_toy_teacher(args.seed)
        teacher.eval()
        teacher_source = f"make_toy_teacher(seed={args.seed})"
    budgets = [k for k in (1, 2, 4) if k <= args.block_length]
    test = [get_task(n, num_examples=args.num_eval, split="test", seed=args.seed) for n in args.tasks]
    train = [get_task(n, num_examples=args.num_trajectories, split="train", seed=args.seed + 1) for n in args.tasks]
    measure = dict(max_new_tokens=args.max_new_tokens, refresh_intervals=args.refresh_intervals)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, CPU, torch threads {torch.get_num_threads()}",
        "teacher": teacher_source,
        "block_length": args.block_length,
        "tokens_per_step": budgets,
        "max_new_tokens": args.max_new_tokens,
        "accuracy": {"teacher": accuracy_by_cache(teacher, tokenizer, test, budgets, args.block_length, **measure)},
        "teacher_trajectories": trajectory_agreement(
            teacher, tokenizer, train, args.block_length, max_new_tokens=args.max_new_tokens
        ),
    }
    if args.student_dir:
        student, _ = load(args.student_dir)
        report["student"] = args.student_dir
        report["accuracy"]["T3D student"] = accuracy_by_cache(
            student, tokenizer, test, budgets, args.block_length, **measure
        )
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
