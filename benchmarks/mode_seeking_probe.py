"""Probe of the T3D/DDO mode-seeking claim on a task with exactly two valid answers: `two_way_sort`.

"sort:dacbe" -> "abcde" or "edcba", pretraining targets 50/50 at random, so the teacher's per-position marginals are
50/50 and decoding several positions in one step mixes the two modes into invalid answers, while one position per
step is fine. The claim: reverse KL (DDO/T3D) makes the student commit to one mode, so parallel decoding stays valid,
where SFT (forward KL, masked-diffusion CE on the teacher's samples) keeps the mixture.

1. pretrain a toy teacher on the train split of `two_way_sort` (or load it from `--teacher_dir`);
2. collect its trajectories (1 token per step, block = max_new_tokens = 8) on training prompts;
3. distill from the teacher's weights with SFT (as in `reproduce_small.py`) and with `DDOTrainer` at each
   `--ddo_settings` entry (`lr:beta:lambda_path[:reference_temperature[:mask_ratio_exponent]]`; the first is the T3D defaults), same steps and batch size;
4. evaluate teacher and students at 1/2/4/8 tokens per step on test prompts, with the share of outputs that are
   ascending / descending / invalid at each budget.

Writes benchmarks/results/mode_seeking_probe.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mode_seeking_probe.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reproduce_small  # noqa: E402  (reuses its SFT and DDO distillation)
from _common import finish_run  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TASK = "two_way_sort"
COLLECT_SEED = 1234


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher_dir", default=None, help="load the teacher from here if it exists, else save it there")
    p.add_argument("--teacher_steps", type=int, default=2500)
    p.add_argument("--teacher_max_time_s", type=float, default=170.0)
    p.add_argument("--num_prompts", type=int, default=512, help="training prompts (trajectories)")
    p.add_argument("--distill_steps", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--sft_learning_rate", type=float, default=1e-4)
    p.add_argument(
        "--ddo_settings",
        nargs="+",
        default=["1e-4:0.1:0.2"],
        help="DDO runs as lr:beta:lambda_path (alpha 0.5 and the other T3D defaults); the first is the T3D default",
    )
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--eval_examples", type=int, default=256, help="test prompts")
    p.add_argument(
        "--eval_split",
        default="test",
        choices=["test", "train"],
        help="'train' evaluates on the first trajectory prompts (a memorization diagnostic)",
    )
    p.add_argument("--tokens_per_step", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--output", default=os.path.join(RESULTS, "mode_seeking_probe.json"))
    return p.parse_args(argv)


def mode_of(prompt: str, completion: str) -> str:
    """'ascending', 'descending' or 'invalid' (neither sort of the prompt's symbols)."""
    ascending = "".join(sorted(prompt.split(":", 1)[1]))
    answer = "".join(str(completion).split())
    return "ascending" if answer == ascending else "descending" if answer == ascending[::-1] else "invalid"


def evaluate(model, tokenizer, args, name):
    report = reproduce_small.evaluate_task(model, tokenizer, args, TASK, name)
    for result in report["results"]:
        modes = [mode_of(s["prompt"], s["completion"]) for s in result["samples"]]
        result["mode_share"] = {m: modes.count(m) / len(modes) for m in ("ascending", "descending", "invalid")}
        wrong_length = [
            len("".join(s["completion"].split())) != len(s["prompt"].split(":", 1)[1]) for s in result["samples"]
        ]
        result["mode_share"]["invalid_wrong_length"] = sum(wrong_length) / len(modes)
        result["samples"] = result["samples"][:4]
    return report


def row(name, report):
    return {
        "method": name,
        **{f"acc@{r['tokens_per_step']}": round(100 * r["accuracy"], 1) for r in report["results"]},
        **{
            f"asc/desc/inv@{r['tokens_per_step']}": "/".join(
                f"{100 * r['mode_share'][m]:.0f}" for m in ("ascending", "descending", "invalid")
            )
            for r in report["results"]
        },
    }


def main(argv=None):
    args = parse_args(argv)
    logging.getLogger("trl_t3d").setLevel(logging.WARNING)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_t3d import DiffusionGenerationConfig, collect_trajectories
    from trl_t3d.toy.pretraining import make_toy_teacher
    from trl_t3d.toy.tasks import get_task

    start = time.perf_counter()
    torch.manual_seed(0)
    if args.teacher_dir and os.path.exists(os.path.join(args.teacher_dir, "config.json")):
        teacher = AutoModelForCausalLM.from_pretrained(args.teacher_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.teacher_dir)
        teacher_log = {"loaded_from": args.teacher_dir}
    else:
        train_task = get_task(TASK, num_examples=20000, split="train", seed=0)
        teacher, tokenizer, log = make_toy_teacher(
            0,
            args.teacher_steps,
            tasks=[train_task],
            max_time_s=args.teacher_max_time_s,
            show_progress=False,
            return_log=True,
        )
        teacher_log = {k: v for k, v in log.items() if k != "losses"}
        if args.teacher_dir:
            teacher.save_pretrained(args.teacher_dir)
            tokenizer.save_pretrained(args.teacher_dir)
    teacher.eval()
    timings = {"teacher_s": time.perf_counter() - start}
    print(f"teacher: {teacher_log} ({timings['teacher_s']:.0f} s)", flush=True)

    reports = {"teacher": evaluate(teacher, tokenizer, args, "teacher")}
    print(row("teacher", reports["teacher"]), flush=True)

    task = get_task(TASK, num_examples=args.num_prompts, split="train", seed=COLLECT_SEED)
    config = DiffusionGenerationConfig(
        max_new_tokens=task.max_new_tokens, block_length=task.max_new_tokens, tokens_per_step=1
    )
    trajectories = collect_trajectories(
        teacher,
        tokenizer,
        Dataset.from_dict({"prompt_ids": task.prompt_ids(tokenizer)}),
        config,
        batch_size=128,
        prompt_column="prompt_ids",
        teacher_name="toy-teacher",
        show_progress=False,
    )
    text = [tokenizer.decode(c, skip_special_tokens=True) for c in trajectories["completion_ids"]]
    traj_modes = [mode_of(p, c) for p, c in zip(task.prompts, text)]
    trajectory_mode_share = {m: traj_modes.count(m) / len(traj_modes) for m in ("ascending", "descending", "invalid")}
    print(f"{len(trajectories)} trajectories, modes {trajectory_mode_share}", flush=True)

    train_logs = {}
    runs = [("sft", None)] + [(f"ddo[{s}]", s) for s in args.ddo_settings]
    for name, setting in runs:
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        if setting is None:
            ns = argparse.Namespace(distill_steps=args.distill_steps, batch_size=args.batch_size)
            ns.learning_rate = args.sft_learning_rate
            student = reproduce_small.train_sft(teacher, tokenizer, trajectories, ns, args.seed)
        else:
            lr, beta, lambda_path, *rest = (float(x) for x in setting.split(":"))
            ns = argparse.Namespace(
                distill_steps=args.distill_steps,
                batch_size=args.batch_size,
                learning_rate=lr,
                beta=beta,
                alpha=args.alpha,
                lambda_path=lambda_path,
                reference_temperature=rest[0] if rest else 0.0,
                mask_ratio_exponent=rest[1] if len(rest) > 1 else 8.0,
                random_token_ratio=0.1,  # T3D's default, as in every recorded run of this probe
                ref_sync_steps=0,
            )
            student, train_logs[name] = reproduce_small.train_ddo(teacher, tokenizer, trajectories, ns, args.seed)
        timings[f"{name}_train_s"] = time.perf_counter() - t0
        reports[name] = evaluate(student.eval(), tokenizer, args, name)
        print(row(name, reports[name]), f"({timings[f'{name}_train_s']:.0f} s)", flush=True)

    rows = [row(name, rep) for name, rep in reports.items()]
    payload = {
        "benchmark": "mode_seeking_probe",
        "task": TASK,
        "args": vars(args),
        "rows": rows,
        "teacher": teacher_log,
        "trajectory_mode_share": trajectory_mode_share,
        "reports": reports,
        "train_logs": train_logs,
        "timings": timings,
    }
    return finish_run(args.output, payload, start, default=str)


if __name__ == "__main__":
    main()
