"""Small-scale reproduction of the T3D claim on CPU: teacher vs SFT vs DDO without path loss vs T3D.

1. pretrain a toy bidirectional DLLM from scratch on the built-in tasks (arithmetic: one answer with carries;
   permutation_skewed: 24 valid orderings, trained on a skewed mixture whose joint mode is not the per-position
   argmax, so one-step decoding mixes orderings) — or load it from `--teacher_dir`;
2. collect its full-step trajectories (1 token per step, block 8) on training prompts with `collect_trajectories`;
3. distill, from the teacher's weights, with the same trajectories, step budget, batch size and learning rate:
   - `sft`: masked-diffusion cross-entropy on the teacher's completions with random masking (t ~ U(0, 1)): the
     pretraining objective on the trajectories. DDOConfig cannot express it (alpha=0 still leaves DDO's real term,
     a sigmoid of a log-ratio, not a cross-entropy), so it is a plain loop (`trl_t3d.toy.pretraining`);
   - `ddo_no_path`: `DDOTrainer` as `t3d` but with `lambda_path=0`;
   - `t3d`: `DDOTrainer` with the T3D loss (alpha 0.5, beta 0.1, lambda_path 0.2, k 4) and two settings changed
     for this scale: no random tokens (`random_token_ratio=0`) and mask ratios drawn uniformly from
     {1, .75, .5, .25} (`mask_ratio_exponent=0`);
   - `t3d_paper`: `DDOTrainer` with every T3D default (random tokens 0.1, p(r) ∝ r^8);
4. evaluate teacher and students at 1, 2, 4, 8 tokens per step (greedy, low-confidence remasking, block 8), and
   count which ordering each permutation answer is (the data's joint mode, another valid one, or invalid);
5. over `--seeds` (the teacher is pretrained once; seeds change the distillation's data order and noise).

The teacher trains a fixed number of steps (a time cap is opt-in: `--teacher_max_time_s`), and a teacher below
`--teacher_floor` at one token per step stops the run (exit 2) before any student is trained.

Writes benchmarks/results/reproduce_small.{json,png,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reproduce_small.py
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import collect_toy_trajectories, finish_run  # noqa: E402

from trl_t3d.toy.pretraining import DEFAULT_TEACHER_FLOOR  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TASKS = ("arithmetic", "permutation_skewed")
METHODS = ("teacher", "sft", "ddo_no_path", "t3d", "t3d_paper")
PAPER_SETTINGS = {"random_token_ratio": 0.1, "mask_ratio_exponent": 8.0}  # T3D's, where `t3d` differs
COLLECT_SEED = 1234


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher_dir", default=None, help="load the teacher from here if it exists, else save it there")
    p.add_argument("--teacher_steps", type=int, default=7000)
    p.add_argument(
        "--teacher_max_time_s", type=float, default=None, help="opt-in time cap (results then depend on the machine)"
    )
    p.add_argument(
        "--teacher_floor",
        type=float,
        default=DEFAULT_TEACHER_FLOOR,
        help="minimum teacher accuracy (%%) at one token per step on every task; below it nothing is reported",
    )
    p.add_argument("--num_prompts", type=int, default=1024, help="training prompts per task (trajectories)")
    p.add_argument("--distill_steps", type=int, default=400)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.1, help="DDO beta (T3D: 0.1)")
    p.add_argument("--alpha", type=float, default=0.5, help="DDO fake-term weight (T3D: 0.5)")
    p.add_argument("--lambda_path", type=float, default=0.2, help="path-loss weight of t3d (T3D: 0.2)")
    p.add_argument("--mask_ratio_exponent", type=float, default=0.0, help="p(r) ∝ r^exponent (T3D: 8)")
    p.add_argument("--random_token_ratio", type=float, default=0.0, help="share of random tokens (T3D: 0.1)")
    p.add_argument("--reference_temperature", type=float, default=0.0, help="fake-sample temperature (T3D: 0)")
    p.add_argument("--ref_sync_steps", type=int, default=0, help="reference <- policy every N steps (0: off)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help="built-in tasks (the teacher learns them all)")
    p.add_argument("--eval_examples", type=int, default=128, help="test prompts per task")
    p.add_argument("--tokens_per_step", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument(
        "--eval_split",
        default="test",
        choices=["test", "train"],
        help="'train' evaluates on the first prompts the trajectories were collected on (a memorization diagnostic)",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--output", default=os.path.join(RESULTS, "reproduce_small.json"))
    return p.parse_args(argv)


def load_or_train_teacher(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_t3d.toy.pretraining import make_toy_teacher

    if args.teacher_dir and os.path.exists(os.path.join(args.teacher_dir, "config.json")):
        print(f"Loading the teacher from {args.teacher_dir}")
        model = AutoModelForCausalLM.from_pretrained(args.teacher_dir).eval()
        return model, AutoTokenizer.from_pretrained(args.teacher_dir), {"loaded_from": args.teacher_dir}
    from trl_t3d.toy.tasks import get_task

    tasks = [get_task(name, num_examples=20000, split="train") for name in args.tasks]
    model, tokenizer, log = make_toy_teacher(
        0, args.teacher_steps, tasks=tasks, max_time_s=args.teacher_max_time_s, return_log=True
    )
    if args.teacher_dir:
        model.save_pretrained(args.teacher_dir)
        tokenizer.save_pretrained(args.teacher_dir)
    return model, tokenizer, {k: v for k, v in log.items() if k != "losses"}


def collect(teacher, tokenizer, args):
    from trl_t3d import DiffusionGenerationConfig
    from trl_t3d.toy.tasks import get_task

    def config_of(task):
        return DiffusionGenerationConfig(
            max_new_tokens=task.max_new_tokens, block_length=task.block_length, tokens_per_step=1
        )

    tasks = (get_task(name, num_examples=args.num_prompts, split="train", seed=COLLECT_SEED) for name in args.tasks)
    return collect_toy_trajectories(teacher, tokenizer, tasks, config_of, batch_size=128)


def train_sft(teacher, tokenizer, trajectories, args, seed):
    """Masked-diffusion CE on the teacher's completions (EOS-padded to the canvas), same budget as DDO."""
    from trl_t3d.toy.pretraining import pretrain_masked_diffusion

    canvas = 8
    eos = tokenizer.eos_token_id
    examples = [
        (list(p), list(c) + [eos] * (canvas - len(c)))
        for p, c in zip(trajectories["prompt_ids"], trajectories["completion_ids"])
    ]
    student = copy.deepcopy(teacher)
    pretrain_masked_diffusion(
        student,
        tokenizer,
        None,
        args.distill_steps,
        examples=examples,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=10,
        lr_schedule="constant",
        weighting="mean",
        seed=seed,
        show_progress=False,
    )
    return student


def train_ddo(teacher, tokenizer, trajectories, args, seed, **overrides):
    """`DDOTrainer` from the teacher's weights; loss settings from `args`, then `overrides` (e.g. lambda_path=0)."""
    import tempfile

    from trl_t3d import DDOTrainer
    from trl_t3d.toy.pretraining import toy_distillation_config

    settings = {
        "loss_type": "t3d",  # the paper's objective (DDOConfig's default is trl-t3d's recommended one)
        "beta": args.beta,
        "alpha": args.alpha,
        "lambda_path": args.lambda_path,
        "reference_temperature": args.reference_temperature,
        "mask_ratio_exponent": args.mask_ratio_exponent,
        "random_token_ratio": args.random_token_ratio,
        "ref_sync_steps": args.ref_sync_steps,
        **overrides,
    }
    student = copy.deepcopy(teacher)
    config = toy_distillation_config(
        tempfile.mkdtemp(prefix="reproduce_small_ddo_"),
        args.distill_steps,
        args.batch_size,
        args.learning_rate,
        seed,
        **settings,
    )
    trainer = DDOTrainer(student, args=config, train_dataset=trajectories, processing_class=tokenizer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return trainer.model.eval(), logs


def ordering_shares(report: dict) -> dict:
    """Per budget, the share of answers that are the skewed data's joint mode, another valid ordering, or invalid."""
    from trl_t3d.toy.tasks import SKEWED_ORDERINGS

    mode = max(SKEWED_ORDERINGS, key=lambda ow: ow[1])[0]
    shares = {}
    for result in report["results"]:
        counts = {"mode": 0, "other_valid": 0, "invalid": 0}
        for sample in result["samples"]:
            symbols, answer = sample["prompt"].split(":", 1)[1], "".join(sample["completion"].split())
            is_mode = answer == "".join(symbols[i] for i in mode)
            counts["mode" if is_mode else "other_valid" if sample["correct"] else "invalid"] += 1
        shares[result["tokens_per_step"]] = {k: v / max(1, len(result["samples"])) for k, v in counts.items()}
    return shares


def evaluate_task(model, tokenizer, args, task_name: str, name: str) -> dict:
    """`evaluate_few_step` on the test split (or the first trajectory prompts), every sample kept in the report."""
    from trl_t3d.evaluation import evaluate_few_step
    from trl_t3d.toy.tasks import get_task

    if args.eval_split == "train":  # the first prompts of the collection (same generator, same seed)
        task = get_task(task_name, num_examples=args.eval_examples, split="train", seed=COLLECT_SEED)
    else:
        task = get_task(task_name, num_examples=args.eval_examples, split="test", seed=0)
    return evaluate_few_step(
        model,
        tokenizer,
        task,
        args.tokens_per_step,
        temperature=0.0,
        remasking="low_confidence",
        batch_size=128,
        model_name=name,
        show_progress=False,
        num_samples_logged=len(task),
    )


def evaluate(model, tokenizer, args, name):
    reports = []
    for task_name in args.tasks:
        report = evaluate_task(model, tokenizer, args, task_name, name)
        if task_name == "permutation_skewed":
            report["ordering_shares"] = ordering_shares(report)
        for result in report["results"]:
            result["samples"] = result["samples"][:2]
        reports.append(report)
    return reports


def aggregate(per_seed: dict) -> list[dict]:
    """Rows {task, method, tokens_per_step, accuracy_mean, accuracy_std, seeds} from {(method, seed): reports}."""
    rows = []
    methods = list(dict.fromkeys(m for m, _ in per_seed))
    for task in dict.fromkeys(task for reports in per_seed.values() for task in (r["task"] for r in reports)):
        for method in methods:
            seeds = sorted(s for m, s in per_seed if m == method)
            budgets = sorted({r["tokens_per_step"] for rep in per_seed[(method, seeds[0])] for r in rep["results"]})
            for k in budgets:
                accs, nfes = [], []
                for s in seeds:
                    report = next(rep for rep in per_seed[(method, s)] if rep["task"] == task)
                    result = next(r for r in report["results"] if r["tokens_per_step"] == k)
                    accs.append(result["accuracy"])
                    nfes.append(result["nfe"])
                rows.append(
                    {
                        "task": task,
                        "method": method,
                        "tokens_per_step": k,
                        "accuracy_mean": statistics.mean(accs),
                        "accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                        "seeds": seeds,
                        "accuracies": accs,
                        "nfe_mean": statistics.mean(nfes),
                    }
                )
    return rows


def mean_ordering_shares(per_seed: dict) -> dict:
    """{method: {tokens_per_step: {mode, other_valid, invalid}}} averaged over seeds (permutation_skewed only)."""
    out = {}
    for (method, _), reports in per_seed.items():
        for report in reports:
            for k, share in report.get("ordering_shares", {}).items():
                slot = out.setdefault(method, {}).setdefault(k, {"mode": [], "other_valid": [], "invalid": []})
                for key, value in share.items():
                    slot[key].append(value)
    return {
        m: {k: {key: statistics.mean(v) for key, v in d.items()} for k, d in budgets.items()}
        for m, budgets in out.items()
    }


def shares_table(shares: dict) -> str:
    """Markdown: permutation_skewed answers that are the joint mode / another valid ordering / invalid (%)."""
    budgets = sorted({k for b in shares.values() for k in b})
    lines = [
        "permutation_skewed answers: joint mode / other valid ordering / invalid (%, mean over seeds)",
        "",
        "| method | " + " | ".join(f"{k} tok/step" for k in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for method, by_budget in shares.items():
        cells = [
            " / ".join(f"{100 * by_budget[k][key]:.0f}" for key in ("mode", "other_valid", "invalid")) for k in budgets
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = sorted(
                (r for r in rows if r["task"] == task and r["method"] == method), key=lambda r: r["tokens_per_step"]
            )
            xs = [r["tokens_per_step"] for r in sel]
            ys = [100 * r["accuracy_mean"] for r in sel]
            es = [100 * r["accuracy_std"] for r in sel]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per step")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("T3D small reproduction (toy DLLM, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    logging.getLogger("trl_t3d").setLevel(logging.WARNING)
    from trl_t3d.evaluation import rows_markdown_table
    from trl_t3d.toy.pretraining import check_teacher_floor

    start = time.perf_counter()
    torch.manual_seed(0)
    teacher, tokenizer, teacher_log = load_or_train_teacher(args)
    t_teacher = time.perf_counter() - start
    trajectories = collect(teacher, tokenizer, args)
    print(f"{len(trajectories)} trajectories collected")
    per_seed, train_logs, timings = {}, {}, {"teacher_s": t_teacher}
    teacher_reports = evaluate(teacher, tokenizer, args, "teacher") if "teacher" in args.methods else None
    floor_reports = teacher_reports or [
        evaluate_task(teacher, tokenizer, argparse.Namespace(**{**vars(args), "tokens_per_step": [1]}), t, "teacher")
        for t in args.tasks
    ]
    teacher_log["accuracy_at_one_token_per_step"] = check_teacher_floor(
        floor_reports, args.teacher_floor, steps=teacher_log.get("steps")
    )
    for seed in args.seeds:
        if teacher_reports is not None:
            per_seed[("teacher", seed)] = teacher_reports  # greedy decoding of one teacher: identical over seeds
        for method in args.methods:
            if method == "teacher":
                continue
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            if method == "sft":
                student, logs = train_sft(teacher, tokenizer, trajectories, args, seed), None
            else:
                overrides = {"ddo_no_path": {"lambda_path": 0.0}, "t3d_paper": PAPER_SETTINGS}.get(method, {})
                student, logs = train_ddo(teacher, tokenizer, trajectories, args, seed, **overrides)
            timings[f"{method}_seed{seed}_train_s"] = time.perf_counter() - t0
            per_seed[(method, seed)] = evaluate(student, tokenizer, args, method)
            train_logs[f"{method}_seed{seed}"] = logs
            summary = {
                rep["task"]: [round(r["accuracy"], 3) for r in rep["results"]] for rep in per_seed[(method, seed)]
            }
            print(f"seed {seed} {method}: {summary} ({timings[f'{method}_seed{seed}_train_s']:.0f} s)", flush=True)
    rows = aggregate(per_seed)
    table = rows_markdown_table(rows)
    shares = mean_ordering_shares(per_seed)
    if shares:
        table += "\n\n" + shares_table(shares)
    print(table)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    base = os.path.splitext(args.output)[0]
    plot(rows, base + ".png")
    with open(base + ".md", "w") as f:
        f.write(
            "Accuracy (%, mean ± std over seeds) per tokens per step; toy DLLM on CPU "
            "(`benchmarks/reproduce_small.py`).\n\n" + table + "\n"
        )
    payload = {
        "benchmark": "reproduce_small",
        "args": vars(args),
        "rows": rows,
        "ordering_shares": shares,
        "teacher": teacher_log,
        "train_logs": train_logs,
        "reports": {f"{m}_seed{s}": reps for (m, s), reps in per_seed.items()},
        "timings": timings,
    }
    return finish_run(args.output, payload, start, default=str)


if __name__ == "__main__":
    from trl_t3d.toy.pretraining import TeacherBelowFloorError

    try:
        main()
    except TeacherBelowFloorError as err:
        print(f"reproduce_small stopped: {err}", file=sys.stderr)
        sys.exit(2)
