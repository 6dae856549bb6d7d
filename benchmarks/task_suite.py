"""Does the objective win beyond one task? Teacher vs NTD vs T3D variants on a suite of five task families.

For every seed: a toy teacher is pretrained from scratch (fixed step count) on the training split of every task,
decodes trajectories one token per step in blocks of 4 (the paper's collection), and each method trains a student
from the teacher's weights on the same trajectories with the same budget, through `DDOTrainer` (one flag,
`loss_type`, switches the objective; the states and collator are shared). Every model is then evaluated on unseen
test prompts at 1 / 2 / 4 tokens per step in blocks of 4 and 1 / 2 / 4 / 8 in one block of 16.

Tasks (trl_t3d.evaluation.tasks): arithmetic (deterministic, answers of 2-3 digits), reverse (deterministic,
4-10 letters over several blocks), permutation_skewed (many answers, a learnable joint mode), two_way_sort (two
answers at 50/50), phrase (many answers with constraints across a two-block phrase).

    OMP_NUM_THREADS=1 python benchmarks/task_suite.py                     # 3 seeds -> benchmarks/results/task_suite.*
    python benchmarks/task_suite.py --seeds 0 --methods ntd t3d_uniform --tag probe  # one seed, two methods
    OMP_NUM_THREADS=1 python benchmarks/task_suite.py --seeds 1 --tag seed1 &   # one process per seed, then
    python benchmarks/task_suite.py --merge benchmarks/results/seed0.json benchmarks/results/seed1.json ...

Refuses to report (exit 2) when a teacher misses `--teacher_floor` at one token per step on any task: a student of
an untrained teacher says nothing about the objective. Results do not depend on machine speed (fixed step counts).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import zlib

import torch

SUITE = ("arithmetic", "reverse", "permutation_skewed", "two_way_sort", "phrase")
MANY_ANSWER_TASKS = ("permutation_skewed", "phrase")
CANVAS = 16
COLLECT_SEED = 1

# Each method is `DDOConfig` overrides on top of the shared training budget.
METHODS: dict[str, dict] = {
    # The paper's baseline: masked cross-entropy on the same trajectory states.
    "ntd": {"loss_type": "ntd", "random_token_ratio": 0.0, "mask_ratio_exponent": 0.0},
    # Every T3D default of the paper (DDOConfig's defaults before this benchmark).
    "t3d_paper": {"loss_type": "t3d", "random_token_ratio": 0.1, "mask_ratio_exponent": 8.0},
    # T3D's loss on the states that few-step decoding visits (uniform mask ratios, no random tokens).
    "t3d_uniform": {"loss_type": "t3d", "random_token_ratio": 0.0, "mask_ratio_exponent": 0.0},
    # T3D anchored by NTD on the same states.
    "t3d_ntd": {
        "loss_type": ["ddo", "path", "ntd"],
        "loss_weights": [1.0, 0.2, 1.0],
        "random_token_ratio": 0.0,
        "mask_ratio_exponent": 0.0,
    },
    # NTD with dParallel's certainty forcing.
    "ntd_certainty": {
        "loss_type": ["ntd", "certainty"],
        "loss_weights": [1.0, 0.5],
        "random_token_ratio": 0.0,
        "mask_ratio_exponent": 0.0,
    },
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--tasks", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--teacher_steps", type=int, default=16000)
    parser.add_argument("--teacher_max_time_s", type=float, default=None, help="Opt-in time cap (not reproducible).")
    parser.add_argument("--teacher_floor", type=float, default=90.0, help="Min. 1-token accuracy (%%) of a teacher.")
    parser.add_argument("--trajectories_per_task", type=int, default=512)
    parser.add_argument("--student_steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--test_prompts", type=int, default=128)
    parser.add_argument(
        "--cache_dir", default=None, help="Keep each seed's teacher and trajectories here and reuse them on reruns."
    )
    parser.add_argument(
        "--merge", nargs="+", default=[], help="Only merge the per-seed results of these earlier JSON reports."
    )
    parser.add_argument("--output_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--tag", default="task_suite", help="Output file stem.")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ stages
def train_teacher(seed: int, args):
    from trl_t3d.evaluation import get_task
    from trl_t3d.pretraining import make_toy_teacher

    tasks = [get_task(name, num_examples=20000, split="train", seed=seed) for name in args.tasks]
    model, tokenizer, log = make_toy_teacher(
        seed, args.teacher_steps, tasks=tasks, max_time_s=args.teacher_max_time_s, return_log=True, show_progress=False
    )
    return model, tokenizer, {k: v for k, v in log.items() if k != "losses"}


def _cache_path(args, seed: int, what: str) -> str | None:
    if not args.cache_dir:
        return None
    key = f"seed{seed}-steps{args.teacher_steps}-{'-'.join(args.tasks)}"
    return os.path.join(args.cache_dir, key, what)


def cached_teacher(seed: int, args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _cache_path(args, seed, "teacher")
    if path and os.path.exists(os.path.join(path, "config.json")):
        with open(os.path.join(path, "log.json")) as f:
            log = json.load(f)
        return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), log
    teacher, tokenizer, log = train_teacher(seed, args)
    if path and args.teacher_max_time_s is None:
        teacher.save_pretrained(path)
        tokenizer.save_pretrained(path)
        with open(os.path.join(path, "log.json"), "w") as f:
            json.dump(log, f)
    return teacher, tokenizer, log


def cached_trajectories(teacher, tokenizer, args, seed: int):
    from datasets import load_from_disk

    path = _cache_path(args, seed, f"trajectories-{args.trajectories_per_task}")
    if path and os.path.exists(path):
        return load_from_disk(path)
    trajectories = collect(teacher, tokenizer, args, seed)
    if path:
        trajectories.save_to_disk(path)
    return trajectories


def cached_student_results(teacher, tokenizer, trajectories, args, seed: int, method: str) -> dict:
    """Train and evaluate one student; with --cache_dir its results are kept, keyed by everything that shapes them."""
    key = json.dumps(
        [METHODS[method], args.student_steps, args.batch_size, args.learning_rate, args.test_prompts],
        sort_keys=True,
    )
    path = _cache_path(args, seed, f"results-{args.trajectories_per_task}-{zlib.crc32(key.encode()):08x}.json")
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    print(f"seed {seed}: training {method}", flush=True)
    student = train_student(teacher, tokenizer, trajectories, args, seed, method)
    results = evaluate(student, tokenizer, args, method)
    if path:
        with open(path, "w") as f:
            json.dump(results, f)
    return results


def collect(teacher, tokenizer, args, seed: int):
    from datasets import Dataset, concatenate_datasets

    from trl_t3d import DiffusionGenerationConfig, collect_trajectories
    from trl_t3d.evaluation import get_task

    config = DiffusionGenerationConfig(max_new_tokens=CANVAS, block_length=4, tokens_per_step=1)
    parts = []
    for name in args.tasks:
        task = get_task(name, num_examples=args.trajectories_per_task, split="train", seed=COLLECT_SEED + seed)
        prompts = Dataset.from_dict({"prompt_ids": task.prompt_ids(tokenizer)})
        parts.append(
            collect_trajectories(
                teacher,
                tokenizer,
                prompts,
                config,
                batch_size=256,
                prompt_column="prompt_ids",
                teacher_name="toy-teacher",
                show_progress=False,
            )
        )
    return concatenate_datasets(parts).shuffle(seed=seed)


def train_student(teacher, tokenizer, trajectories, args, seed: int, method: str):
    from trl_t3d import DDOConfig, DDOTrainer

    config = DDOConfig(
        output_dir=tempfile.mkdtemp(prefix=f"task_suite_{method}_"),
        max_steps=args.student_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        logging_steps=max(1, args.student_steps // 4),
        save_strategy="no",
        report_to=[],
        seed=seed,
        disable_tqdm=True,
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        **METHODS[method],
    )
    trainer = DDOTrainer(copy.deepcopy(teacher), args=config, train_dataset=trajectories, processing_class=tokenizer)
    trainer.train()
    return trainer.model.eval()


def evaluate(model, tokenizer, args, name: str) -> dict:
    """Accuracy per task, block length and tokens per step (test split, greedy, low-confidence remasking)."""
    from trl_t3d.evaluation import evaluate_few_step, get_task

    out = {}
    for task_name in args.tasks:
        task = get_task(task_name, num_examples=args.test_prompts, split="test", seed=0)
        for block, budgets in ((4, (1, 2, 4)), (CANVAS, (1, 2, 4, 8))):
            report = evaluate_few_step(
                model,
                tokenizer,
                task,
                budgets,
                max_new_tokens=CANVAS,
                block_length=block,
                temperature=0.0,
                remasking="low_confidence",
                batch_size=128,
                model_name=name,
                show_progress=False,
                num_samples_logged=0,
            )
            for result in report["results"]:
                key = f"{task_name}/b{block}/k{result['tokens_per_step']}"
                out[key] = {"accuracy": result["accuracy"], "tokens_per_forward": result["tokens_per_forward"]}
    return out


# ------------------------------------------------------------------------------------------------ report
def aggregate(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{model: {key: (mean, std)}} over seeds, accuracies in percent."""
    models = next(iter(per_seed.values())).keys()
    table = {}
    for model in models:
        keys = per_seed[next(iter(per_seed))][model].keys()
        table[model] = {}
        for key in keys:
            values = [100 * per_seed[s][model][key]["accuracy"] for s in per_seed]
            table[model][key] = (statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)
    return table


def markdown(table, tasks) -> str:
    lines = []
    for block, budgets in ((4, (1, 2, 4)), (CANVAS, (1, 2, 4, 8))):
        lines.append(f"\n### Decoding block {block}\n")
        header = "| task | model | " + " | ".join(f"{k} tok/step" for k in budgets) + " |"
        lines += [header, "|" + "---|" * (len(budgets) + 2)]
        for task in tasks:
            for model, values in table.items():
                cells = [
                    f"{values[f'{task}/b{block}/k{k}'][0]:.1f} ± {values[f'{task}/b{block}/k{k}'][1]:.1f}"
                    for k in budgets
                ]
                lines.append(f"| {task} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table, tasks, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), sharey=True)
    for ax, task in zip(axes if len(tasks) > 1 else [axes], tasks):
        for model, values in table.items():
            budgets = (1, 2, 4)
            means = [values[f"{task}/b4/k{k}"][0] for k in budgets]
            ax.plot(budgets, means, marker="o", label=model)
        ax.set_title(task)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4], ["1", "2", "4"])
        ax.set_xlabel("tokens per step (block 4)")
        ax.set_ylim(0, 102)
    axes[0].set_ylabel("accuracy (%)") if len(tasks) > 1 else axes.set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize=7) if len(tasks) > 1 else axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.perf_counter()
    per_seed, teachers = {}, {}
    for path in args.merge:  # per-seed reports of earlier runs (e.g. seeds run as parallel processes)
        with open(path) as f:
            earlier = json.load(f)
        per_seed.update({int(seed): results for seed, results in earlier["per_seed"].items()})
        teachers.update({int(seed): log for seed, log in earlier["teachers"].items()})
    for seed in [] if args.merge else args.seeds:
        torch.manual_seed(seed)
        teacher, tokenizer, log = cached_teacher(seed, args)
        results = {"teacher": evaluate(teacher, tokenizer, args, "teacher")}
        floor_misses = {
            t: 100 * results["teacher"][f"{t}/b4/k1"]["accuracy"]
            for t in args.tasks
            if 100 * results["teacher"][f"{t}/b4/k1"]["accuracy"] < args.teacher_floor
        }
        teachers[seed] = {**log, "floor_misses": floor_misses}
        if floor_misses:
            print(
                f"Seed {seed}: the teacher misses the {args.teacher_floor}% floor at one token per step on "
                f"{floor_misses} after {log['steps']} steps; refusing to report students of an untrained teacher. "
                "Raise --teacher_steps (or drop an explicit --teacher_max_time_s).",
                file=sys.stderr,
            )
            return 2
        trajectories = cached_trajectories(teacher, tokenizer, args, seed)
        for method in args.methods:
            results[method] = cached_student_results(teacher, tokenizer, trajectories, args, seed, method)
        per_seed[seed] = results
    table = aggregate(per_seed)
    stem = os.path.join(args.output_dir, args.tag)
    with open(f"{stem}.json", "w") as f:
        json.dump(
            {
                "command": " ".join(["python", "benchmarks/task_suite.py", *(argv or sys.argv[1:])]),
                "settings": vars(args),
                "methods": {m: METHODS[m] for m in args.methods},
                "teachers": teachers,
                "per_seed": per_seed,
                "mean_std": {m: {k: list(v) for k, v in values.items()} for m, values in table.items()},
                "wall_time_s": time.perf_counter() - started,
            },
            f,
            indent=1,
        )
    text = markdown(table, args.tasks)
    with open(f"{stem}.md", "w") as f:
        f.write(f"# Task suite ({len(per_seed)} seeds, mean ± std of accuracy %)\n{text}")
    plot(table, args.tasks, f"{stem}.png")
    print(text)
    print(f"Wrote {stem}.json/.md/.png in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
