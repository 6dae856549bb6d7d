"""De-risk the science: a toy DLLM pretrained from scratch on CPU, evaluated at 1/2/4/8 tokens per step.

Wanted: high accuracy at 1 token per step on both training tasks, and on the many-answers (permutation_skewed) task
a strong drop at 4 tokens per step (<= 50% of the 1-token accuracy): parallel decoding from independent marginals
mixes orderings, which is what few-step distillation has to fix.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/toy_teacher.py            # writes benchmarks/results/toy_teacher.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import platform_info, write_payload  # noqa: E402

from trl_t3d.evaluation import evaluate_few_step, markdown_table, plot_frontier  # noqa: E402
from trl_t3d.toy.pretraining import make_toy_teacher  # noqa: E402
from trl_t3d.toy.tasks import get_task  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--max_time_s", type=float, default=300.0, help="Stop pretraining after this long.")
    parser.add_argument("--hidden_size", type=int, default=96)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--num_eval", type=int, default=256, help="Test prompts per task.")
    parser.add_argument("--output", default=os.path.join(RESULTS, "toy_teacher.json"))
    parser.add_argument("--save_dir", default=None, help="Also save the teacher (model + tokenizer) here.")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, tokenizer, log = make_toy_teacher(
        seed=args.seed,
        steps=args.steps,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        learning_rate=args.learning_rate,
        max_time_s=args.max_time_s,
        return_log=True,
    )
    if args.save_dir:
        model.save_pretrained(args.save_dir)
        tokenizer.save_pretrained(args.save_dir)
    reports = []
    for name in ("arithmetic", "permutation_skewed"):  # the tasks `make_toy_teacher` trains on
        task = get_task(name, num_examples=args.num_eval, split="test", seed=args.seed + 1)
        report = evaluate_few_step(
            model, tokenizer, task, [1, 2, 4, 8], temperature=0.0, remasking="low_confidence", model_name="teacher"
        )
        reports.append(report)
        for r in report["results"]:
            print(
                f"{name:12s} {r['tokens_per_step']} tok/step: acc {r['accuracy']:.3f}  NFE {r['nfe']:.2f}  "
                f"TPF {r['tokens_per_forward']:.2f}  e.g. {r['samples'][0]['prompt']!r} -> {r['samples'][0]['completion']!r}"
            )
    perm = {r["tokens_per_step"]: r["accuracy"] for r in reports[1]["results"]}
    arith = {r["tokens_per_step"]: r["accuracy"] for r in reports[0]["results"]}
    checks = {
        "arithmetic_acc_1": arith[1],
        "permutation_skewed_acc_1": perm[1],
        "permutation_skewed_keep_ratio_4": perm[4] / perm[1] if perm[1] else None,
        "permutation_skewed_drop_ok": bool(perm[1] > 0 and perm[4] <= 0.5 * perm[1]),
    }
    print(json.dumps(checks, indent=2))
    payload = {
        "benchmark": "toy_teacher",
        "args": vars(args),
        "pretraining": {k: v for k, v in log.items() if k != "losses"}
        | {"final_loss": sum(log["losses"][-100:]) / len(log["losses"][-100:])},
        "checks": checks,
        "reports": reports,
        "total_time_s": time.perf_counter() - start,
        "platform": platform_info(),
    }
    write_payload(args.output, payload)
    plot_frontier({"teacher": reports}, args.output.replace(".json", ".png"))
    print(markdown_table({"teacher": reports}))
    print(f"Wrote {args.output} in {payload['total_time_s']:.0f} s.")


if __name__ == "__main__":
    main()
