"""`make demo`: the whole T3D pipeline on the built-in default — offline, on CPU, in a few minutes.

1. pretrain a toy bidirectional diffusion LM from scratch on the built-in tasks (arithmetic, permutation_skewed) for
   a fixed number of steps, and evaluate it; below `--teacher_floor` at one token per step the demo stops (exit 2);
2. let it write its own slow trajectories (one token per step) with `collect_trajectories`;
3. distill a few-step student with `DDOTrainer` (DDOConfig's recommended objective: T3D + mean-field reverse KL);
4. evaluate the student at 1, 2 and 4 tokens per step: a table (teacher vs student) on stdout, JSON and a PNG plot.

Everything is the code users run on real models; only the model and the tasks are small. Fixed step counts make the
figures the same on every machine (about 5 minutes on one CPU thread).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

from .pretraining import DEFAULT_TEACHER_FLOOR


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="demo_output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher_steps", type=int, default=3500, help="pretraining steps of the toy teacher")
    p.add_argument(
        "--teacher_max_time_s",
        type=float,
        default=None,
        help="opt-in time cap on pretraining (the figures then depend on the machine's speed)",
    )
    p.add_argument(
        "--teacher_floor",
        type=float,
        default=DEFAULT_TEACHER_FLOOR,
        help="minimum accuracy (%%) of the teacher at one token per step on every task; below it the demo stops",
    )
    p.add_argument("--num_prompts", type=int, default=1024, help="training prompts per task to collect trajectories")
    p.add_argument("--distill_steps", type=int, default=400, help="Distillation optimizer steps")
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_examples", type=int, default=256, help="test prompts per task")
    p.add_argument("--tokens_per_step", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument(
        "--block_length",
        type=int,
        default=4,
        help="decoding block for trajectories and evaluation (T3D: 4, so 4 tokens per step is one step per block)",
    )
    args = p.parse_args(argv)
    for name in ("teacher_steps", "num_prompts", "distill_steps", "batch_size", "eval_examples", "block_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.tokens_per_step) < 1:
        p.error(f"--tokens_per_step must be >= 1, got {args.tokens_per_step}")
    return args


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run_demo(args: argparse.Namespace) -> dict:
    from datasets import Dataset, concatenate_datasets

    from .. import DDOTrainer, DiffusionGenerationConfig, collect_trajectories
    from ..evaluation import evaluate_few_step, markdown_table, plot_frontier
    from .pretraining import check_teacher_floor, make_toy_teacher, toy_distillation_config
    from .tasks import get_task

    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.perf_counter()
    task_names = ("arithmetic", "permutation_skewed")
    budgets = sorted({1, *(k for k in args.tokens_per_step if k <= args.block_length)})  # 1: the teacher's floor
    test_tasks = [get_task(n, num_examples=args.eval_examples, split="test", seed=args.seed) for n in task_names]

    def evaluate(model, label):
        return [
            evaluate_few_step(
                model,
                tokenizer,
                task,
                budgets,
                block_length=args.block_length,
                batch_size=128,
                model_name=label,
                show_progress=False,
            )
            for task in test_tasks
        ]

    _section(f"1/4 Pretraining a toy diffusion LM (bidirectional Llama, masked diffusion, {args.teacher_steps} steps)")
    teacher, tokenizer, log = make_toy_teacher(
        args.seed, args.teacher_steps, max_time_s=args.teacher_max_time_s, return_log=True
    )
    teacher.eval()
    teacher.save_pretrained(os.path.join(args.output_dir, "teacher"))
    tokenizer.save_pretrained(os.path.join(args.output_dir, "teacher"))
    reports: dict[str, list] = {"teacher": evaluate(teacher, "teacher")}
    floor = check_teacher_floor(reports["teacher"], args.teacher_floor, steps=log["steps"])
    print(
        f"Teacher after {log['steps']} steps, accuracy at one token per step: "
        + ", ".join(f"{task} {acc:.1f}%" for task, acc in floor.items())
        + f" (floor {args.teacher_floor:g}%)"
    )

    _section("2/4 Collecting the teacher's trajectories (1 token per step)")
    train_tasks = [get_task(n, num_examples=args.num_prompts, split="train", seed=args.seed + 1) for n in task_names]
    collected = []
    for task in train_tasks:
        prompts = Dataset.from_dict({"prompt_ids": task.prompt_ids(tokenizer)})
        config = DiffusionGenerationConfig(
            max_new_tokens=task.max_new_tokens, block_length=args.block_length, tokens_per_step=1
        )
        collected.append(
            collect_trajectories(
                teacher, tokenizer, prompts, config, batch_size=128, prompt_column="prompt_ids", teacher_name="toy"
            )
        )
    trajectories = concatenate_datasets(collected).shuffle(seed=args.seed)
    print(f"{len(trajectories)} trajectories, e.g. step_map {trajectories[0]['step_map']}")

    _section("3/4 Distilling a few-step student (DDOConfig's recommended preset)")
    student = copy.deepcopy(teacher)
    # DDOConfig's defaults: T3D's loss + mean-field reverse KL to the frozen teacher, uniform mask ratios, no random
    # tokens (measured on benchmarks/task_suite.py; preset="t3d_paper" is the paper's exact recipe).
    training_args = toy_distillation_config(
        os.path.join(args.output_dir, "student"),
        args.distill_steps,
        args.batch_size,
        args.learning_rate,
        args.seed,
        logging_steps=max(1, args.distill_steps // 10),
        disable_tqdm=False,
    )
    trainer = DDOTrainer(student, args=training_args, train_dataset=trajectories, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()

    _section("4/4 Evaluating the student at several tokens per step")
    reports["T3D student"] = evaluate(trainer.model, "T3D student")
    table = markdown_table(reports)
    print("\nAccuracy (%) per tokens per step, teacher vs T3D student:\n")
    print(table)
    plot = plot_frontier(reports, os.path.join(args.output_dir, "frontier.png"), title="T3D demo: toy diffusion LM")
    summary = {
        "reports": reports,
        "table": table,
        "plot": plot,
        "teacher_pretraining": {"steps": log["steps"], "wall_time_s": round(log["wall_time_s"], 1)},
        "teacher_accuracy_at_one_token_per_step": floor,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "args": vars(args),
    }
    with open(os.path.join(args.output_dir, "demo_report.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"\nPlot: {plot}\nReport: {os.path.join(args.output_dir, 'demo_report.json')}")
    print(f"Total time: {summary['elapsed_s']} s")
    return summary


def main(argv=None) -> int:
    from .pretraining import TeacherBelowFloorError

    try:
        run_demo(parse_args(argv))
    except TeacherBelowFloorError as err:
        print(f"\ndemo stopped: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
