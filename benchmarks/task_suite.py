"""Does the objective win beyond one task? Teacher vs NTD vs the recommended objective vs T3D variants, on five task
families.

For every seed: a toy teacher is pretrained from scratch (fixed step count) on the training split of every task,
decodes trajectories one token per step in blocks of 4 (the paper's collection), and each method trains a student
from the teacher's weights on the same trajectories with the same budget, through `DDOTrainer` (one flag,
`loss_type`, switches the objective; the states and collator are shared). Every model is then evaluated on unseen
test prompts at 1 / 2 / 4 tokens per step in blocks of 4 and 1 / 2 / 4 / 8 in one block of 16, and with threshold
decoding (Fast-dLLM's rule, thresholds 0.9 / 0.7 / 0.5: accuracy, tokens per forward and AUP).

Tasks (trl_t3d.toy.tasks): arithmetic (deterministic, answers of 2-3 digits), reverse (deterministic,
4-10 letters over several blocks), permutation_skewed (many answers, a learnable joint mode), two_way_sort (two
answers at 50/50), phrase (many answers with constraints across a two-block phrase).

    OMP_NUM_THREADS=1 python benchmarks/task_suite.py                     # 3 seeds -> benchmarks/results/task_suite.*
    python benchmarks/task_suite.py --seeds 0 --methods ntd t3d --tag probe  # one seed, two methods
    OMP_NUM_THREADS=1 python benchmarks/task_suite.py --seeds 1 --tag seed1 &   # one process per seed, then
    python benchmarks/task_suite.py --merge benchmarks/results/seed0.json benchmarks/results/seed1.json ...

Teachers are checked before any student exists: a seed whose teacher misses `--teacher_floor` at one token per step
on some task is skipped (reported in the JSON) and the next candidate of `--seeds` is tried, until `--num_seeds`
seeds are valid; with too few the run refuses to report (exit 2). The rule looks at the teacher alone, so it cannot
favour one objective. Results do not depend on machine speed (fixed step counts).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import collect_toy_trajectories  # noqa: E402

SUITE = ("arithmetic", "reverse", "permutation_skewed", "two_way_sort", "phrase")
MANY_ANSWER_TASKS = ("permutation_skewed", "two_way_sort", "phrase")
CANVAS = 16
COLLECT_SEED = 1

# Each method is `DDOConfig` overrides on top of the shared training budget.
METHODS: dict[str, dict] = {
    # The paper's baseline: masked cross-entropy on the same trajectory states.
    "ntd": {"loss_type": "ntd"},
    # DDOConfig's defaults (preset "recommended"): T3D's objective + mean-field reverse KL to the frozen teacher (the
    # student's argmax fills the block), uniform mask ratios, no random tokens.
    "recommended": {},
    # NTD + the mean-field term (no DDO: one reference forward fewer per step).
    "ntd_mf": {"loss_type": "ntd_mf"},
    # T3D's objective (DDO + path loss) on the recommended states, without the mean-field term.
    "t3d": {"loss_type": "t3d"},
    # T3D with the paper's exact settings (preset "t3d_paper": its objective, p(r) ∝ r^8, 10% random tokens,
    # reference <- policy every 10 steps).
    "t3d_paper": {"preset": "t3d_paper"},
    # The recommended objective with the block filled by a sample of the student instead of its argmax.
    "recommended_sampled": {"mean_field_temperature": 1.0},
    # NTD with dParallel's certainty forcing.
    "ntd_certainty": {"loss_type": ["ntd", "certainty"], "loss_weights": [1.0, 0.5]},
}
# Probes run on request (`--methods ... t3d_beta1`), not by default.
PROBES: dict[str, dict] = {
    # The paper's states alone, with a frozen teacher: separates state sampling from self-play.
    "t3d_paper_states": {"loss_type": "t3d", "mask_ratio_exponent": 8.0, "random_token_ratio": 0.1},
    # T3D anchored by NTD on the same states.
    "t3d_ntd": {"loss_type": ["ddo", "path", "ntd"], "loss_weights": [1.0, 0.2, 1.0]},
    # A 10x sharper DDO discriminator: DDO's gradient at beta=0.1 is ~20x weaker than CE's.
    "t3d_beta1": {"loss_type": "t3d", "beta": 1.0},
    "t3d_beta1_path1": {"loss_type": "t3d", "beta": 1.0, "lambda_path": 1.0},
    # Mean-field term alone (no NTD anchor), with two queries, and with weights 0.3 and 3.
    "mf_only": {"loss_type": ["mean_field"]},
    "recommended_q2": {"mean_field_queries": 2},
    "ntd_mf_w03": {"loss_type": ["ntd", "mean_field"], "loss_weights": [1.0, 0.3]},
    "ntd_mf_w3": {"loss_type": ["ntd", "mean_field"], "loss_weights": [1.0, 3.0]},
    # LoRA adapters (rank 8, the family's targets; the reference is the base with adapters disabled) instead of full
    # fine-tuning, at a LoRA learning rate.
    "ntd_lora": {"loss_type": "ntd", "lora_r": 8, "learning_rate": 2e-3},
    "t3d_lora": {"loss_type": "t3d", "lora_r": 8, "learning_rate": 2e-3},
    "recommended_lora": {"lora_r": 8, "learning_rate": 2e-3},
}
ALL_METHODS = {**METHODS, **PROBES}
RECOMMENDED = "recommended"
# Threshold decoding (Fast-dLLM's rule: the most confident token plus every one at or above the threshold).
THRESHOLDS = (0.9, 0.7, 0.5)
EVAL_VERSION = 2  # bump when `evaluate` measures more, so cached results are recomputed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(range(8)), help="Candidate seeds, tried in order."
    )
    parser.add_argument("--num_seeds", type=int, default=3, help="Valid seeds wanted (at most len(--seeds)).")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(ALL_METHODS))
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
    parser.add_argument(
        "--save_students", default=None, help="Also save each student to DIR/seed{S}/{method} (for cache_accuracy.py)."
    )
    parser.add_argument("--output_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--tag", default="task_suite", help="Output file stem.")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ stages
def train_teacher(seed: int, args):
    from trl_t3d.toy.pretraining import make_toy_teacher
    from trl_t3d.toy.tasks import get_task

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
    """Train and evaluate one student; with --cache_dir its results are kept, keyed by everything that shapes them:
    the resolved `DDOConfig` (so a changed default is never served from an old run) and the evaluation."""
    settings = student_config(args, seed, method, output_dir="-").to_dict()
    settings = {k: v for k, v in settings.items() if not k.endswith("_dir")}
    lora_r = ALL_METHODS[method].get("lora_r")
    key = json.dumps(
        [settings, args.test_prompts, EVAL_VERSION] + ([lora_r] if lora_r else []), sort_keys=True, default=str
    )
    path = _cache_path(args, seed, f"results-{args.trajectories_per_task}-{zlib.crc32(key.encode()):08x}.json")
    save_dir = os.path.join(args.save_students, f"seed{seed}", method) if args.save_students else None
    if path and os.path.exists(path) and (save_dir is None or os.path.isdir(save_dir)):
        with open(path) as f:
            return json.load(f)
    print(f"seed {seed}: training {method}", flush=True)
    student = train_student(teacher, tokenizer, trajectories, args, seed, method, save_dir)
    results = evaluate(student, tokenizer, args, method)
    if path:
        with open(path, "w") as f:
            json.dump(results, f)
    return results


def collect(teacher, tokenizer, args, seed: int):
    from trl_t3d import DiffusionGenerationConfig
    from trl_t3d.toy.tasks import get_task

    config = DiffusionGenerationConfig(max_new_tokens=CANVAS, block_length=4, tokens_per_step=1)
    tasks = (
        get_task(name, num_examples=args.trajectories_per_task, split="train", seed=COLLECT_SEED + seed)
        for name in args.tasks
    )
    return collect_toy_trajectories(teacher, tokenizer, tasks, lambda task: config).shuffle(seed=seed)


def student_config(args, seed: int, method: str, output_dir: str):
    """The method's `DDOConfig` (its `lora_r`, if any, is not a config field: `train_student` reads it)."""
    from trl_t3d.toy.pretraining import toy_distillation_config

    settings = {k: v for k, v in ALL_METHODS[method].items() if k != "lora_r"}
    return toy_distillation_config(
        output_dir,
        args.student_steps,
        args.batch_size,
        settings.pop("learning_rate", args.learning_rate),
        seed,
        logging_steps=max(1, args.student_steps // 4),
        activation_checkpointing=False,
        **settings,
    )


def train_student(teacher, tokenizer, trajectories, args, seed: int, method: str, save_dir: str | None = None):
    from peft import LoraConfig

    from trl_t3d import DDOTrainer

    config = student_config(args, seed, method, tempfile.mkdtemp(prefix=f"task_suite_{method}_"))
    lora_r = ALL_METHODS[method].get("lora_r")
    trainer = DDOTrainer(
        copy.deepcopy(teacher),
        args=config,
        train_dataset=trajectories,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=lora_r, lora_alpha=2 * lora_r) if lora_r else None,
    )
    trainer.train()
    if save_dir:
        trainer.save_model(save_dir)  # weights, tokenizer, diffusion_generation_config.json, model card
    return trainer.model.eval()


def evaluate(model, tokenizer, args, name: str) -> dict:
    """Accuracy and tokens per forward per task and decoding: `{task}/b{block}/k{tokens per step}` for fixed budgets
    and `{task}/b{block}/t{threshold}` for threshold decoding (test split, greedy, low-confidence remasking)."""
    from trl_t3d import DiffusionGenerationConfig
    from trl_t3d.evaluation import evaluate_few_step
    from trl_t3d.toy.tasks import get_task

    out = {}
    for task_name in args.tasks:
        task = get_task(task_name, num_examples=args.test_prompts, split="test", seed=0)
        for block, budgets in ((4, (1, 2, 4)), (CANVAS, (1, 2, 4, 8))):
            decodings = [(f"k{k}", [k], None) for k in budgets] + [
                (f"t{t}", [1], dict(threshold=t, threshold_rule="fast_dllm")) for t in THRESHOLDS
            ]
            for label, budget, rule in decodings:
                config = DiffusionGenerationConfig(max_new_tokens=CANVAS, block_length=block, **(rule or {}))
                report = evaluate_few_step(
                    model,
                    tokenizer,
                    task,
                    budget,
                    generation_config=config,
                    temperature=0.0,
                    remasking="low_confidence",
                    batch_size=128,
                    model_name=name,
                    show_progress=False,
                    num_samples_logged=0,
                )
                result = report["results"][0]
                out[f"{task_name}/b{block}/{label}"] = {
                    "accuracy": result["accuracy"],
                    "tokens_per_forward": result["tokens_per_forward"],
                }
    return out


# ------------------------------------------------------------------------------------------------ report
def aggregate(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{model: {key: (mean, std)}} over seeds: accuracies in percent, and `{key}/tpf` tokens per forward."""
    models = next(iter(per_seed.values())).keys()
    table = {}
    for model in models:
        keys = per_seed[next(iter(per_seed))][model].keys()
        table[model] = {}
        for key in keys:
            for suffix, field, scale in (("", "accuracy", 100), ("/tpf", "tokens_per_forward", 1)):
                values = [scale * per_seed[s][model][key][field] for s in per_seed]
                table[model][key + suffix] = _mean_std(values)
    for model, values in aup_per_seed(per_seed).items():
        table[model].update(values)
    return table


def _mean_std(values):
    return statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def aup_per_seed(per_seed) -> dict[str, dict[str, tuple[float, float]]]:
    """AUP of each model's threshold-decoding curve (plus its 1-token point) per task and block, mean ± std over seeds.

    y_max is, per seed, task and block, the best accuracy any model reaches there (AUP's fair comparison)."""
    from trl_t3d.evaluation.report import aup

    out: dict[str, dict[str, list]] = {}
    for results in per_seed.values():
        prefixes = {key.rsplit("/", 1)[0] for key in next(iter(results.values()))}
        for prefix in prefixes:
            labels = ["k1", *(f"t{t}" for t in THRESHOLDS)]
            y_max = max(100 * r[f"{prefix}/{label}"]["accuracy"] for r in results.values() for label in labels)
            for model, r in results.items():
                points = [r[f"{prefix}/{label}"] for label in labels]
                value = aup(
                    [p["tokens_per_forward"] for p in points], [100 * p["accuracy"] for p in points], y_max=y_max
                )
                out.setdefault(model, {}).setdefault(f"{prefix}/aup", []).append(value)
    return {model: {key: _mean_std(v) for key, v in values.items()} for model, values in out.items()}


def _cell(values, key, digits=1):
    mean, std = values[key]
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(table, tasks) -> str:
    lines = []
    for block, budgets in ((4, (1, 2, 4)), (CANVAS, (1, 2, 4, 8))):
        lines.append(f"\n### Decoding block {block}: accuracy at fixed tokens per step\n")
        header = "| task | model | " + " | ".join(f"{k} tok/step" for k in budgets) + " |"
        lines += [header, "|" + "---|" * (len(budgets) + 2)]
        for task in tasks:
            for model, values in table.items():
                cells = [_cell(values, f"{task}/b{block}/k{k}") for k in budgets]
                lines.append(f"| {task} | {model} | " + " | ".join(cells) + " |")
    for block in (4, CANVAS):
        lines.append(f"\n### Decoding block {block}: threshold decoding, accuracy (tokens per forward), AUP\n")
        header = "| task | model | " + " | ".join(f"threshold {t}" for t in THRESHOLDS) + " | AUP |"
        lines += [header, "|" + "---|" * (len(THRESHOLDS) + 3)]
        for task in tasks:
            for model, values in table.items():
                cells = [
                    f"{values[f'{task}/b{block}/t{t}'][0]:.1f} ({values[f'{task}/b{block}/t{t}/tpf'][0]:.2f})"
                    for t in THRESHOLDS
                ]
                lines.append(
                    f"| {task} | {model} | " + " | ".join(cells) + f" | {_cell(values, f'{task}/b{block}/aup', 0)} |"
                )
    return "\n".join(lines) + "\n"


def criteria(table, tasks, method: str = RECOMMENDED) -> tuple[str, dict]:
    """The issue's three done-when checks for `method` (block 4, seed means), as markdown and as data."""
    mean = lambda model, key: table[model][key][0]  # noqa: E731
    rows, checks = [], {}
    for task in tasks:
        teacher_1 = mean("teacher", f"{task}/b4/k1")
        loss_1 = teacher_1 - mean(method, f"{task}/b4/k1")
        vs_ntd = mean(method, f"{task}/b4/k4") - mean("ntd", f"{task}/b4/k4")
        many = task in MANY_ANSWER_TASKS
        kept = mean(method, f"{task}/b4/k4") / teacher_1 if teacher_1 else 0.0
        check = {
            "loss_at_1_tok_step": loss_1,
            "loss_at_1_ok": loss_1 <= 2.0,
            "vs_ntd_at_4": vs_ntd,
            "vs_ntd_ok": vs_ntd >= (5.0 if many else -1.0),
            "kept_of_teacher_at_4": kept if many else None,
            "kept_ok": kept >= 0.8 if many else None,
        }
        checks[task] = check
        mark = lambda ok: "—" if ok is None else ("yes" if ok else "**no**")  # noqa: E731
        rows.append(
            f"| {task} | {loss_1:+.1f} ({mark(check['loss_at_1_ok'])}) | {vs_ntd:+.1f} vs {'>= +5' if many else '>= -1'}"
            f" ({mark(check['vs_ntd_ok'])}) | "
            + (f"{100 * kept:.0f}% ({mark(check['kept_ok'])})" if many else "—")
            + " |"
        )
    text = (
        f"\n### Done-when checks for `{method}` (block 4, means over seeds)\n\n"
        "| task | teacher − it at 1 tok/step (<= 2) | it − NTD at 4 tok/step | it at 4 / teacher at 1 (>= 80%) |\n"
        "|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    return text, checks


def plot(table, tasks, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, task in zip(axes, tasks):
        for model, values in table.items():
            budgets = (1, 2, 4)
            means = [values[f"{task}/b4/k{k}"][0] for k in budgets]
            ax.plot(budgets, means, marker="o", label=model)
        ax.set_title(task)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4], ["1", "2", "4"])
        ax.set_xlabel("tokens per step (block 4)")
        ax.set_ylim(0, 102)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_seed(seed: int, args) -> tuple[dict | None, dict]:
    """(results per model, teacher log); results is None when the teacher misses the floor (nothing else is run)."""
    torch.manual_seed(seed)
    teacher, tokenizer, log = cached_teacher(seed, args)
    results = {"teacher": evaluate(teacher, tokenizer, args, "teacher")}
    one_token = {t: 100 * results["teacher"][f"{t}/b4/k1"]["accuracy"] for t in args.tasks}
    misses = {t: acc for t, acc in one_token.items() if acc < args.teacher_floor}
    log = {**log, "one_token_accuracy": one_token, "floor_misses": misses}
    if misses:
        print(
            f"Seed {seed}: the teacher misses the {args.teacher_floor}% floor at one token per step on {misses} after "
            f"{log['steps']} steps; no student of it is trained or reported (next candidate seed).",
            file=sys.stderr,
        )
        return None, log
    trajectories = cached_trajectories(teacher, tokenizer, args, seed)
    for method in args.methods:
        results[method] = cached_student_results(teacher, tokenizer, trajectories, args, seed, method)
    return results, log


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
    wanted = min(args.num_seeds, len(args.seeds))
    for seed in [] if args.merge else args.seeds:
        if len(per_seed) == wanted:
            break
        results, teachers[seed] = run_seed(seed, args)
        if results is not None:
            per_seed[seed] = results
    if not per_seed or (not args.merge and len(per_seed) < wanted):
        print(
            f"Only {len(per_seed)} of {wanted} seeds have a teacher above the {args.teacher_floor}% floor (candidates "
            f"{args.seeds}); refusing to report. Raise --teacher_steps or add candidate --seeds.",
            file=sys.stderr,
        )
        return 2
    table = aggregate(per_seed)
    verdict, checks = criteria(table, args.tasks) if {"ntd", RECOMMENDED} <= set(table) else ("", {})
    stem = os.path.join(args.output_dir, args.tag)
    with open(f"{stem}.json", "w") as f:
        json.dump(
            {
                "command": " ".join(["python", "benchmarks/task_suite.py", *(argv or sys.argv[1:])]),
                "settings": vars(args),
                "methods": {m: ALL_METHODS[m] for m in args.methods},
                "seeds": sorted(per_seed),
                "skipped_seeds": {s: log["floor_misses"] for s, log in teachers.items() if log.get("floor_misses")},
                "teachers": teachers,
                "per_seed": per_seed,
                "mean_std": {m: {k: list(v) for k, v in values.items()} for m, values in table.items()},
                "criteria": {"method": RECOMMENDED, "checks": checks},
                "wall_time_s": time.perf_counter() - started,
            },
            f,
            indent=1,
        )
    text = markdown(table, args.tasks) + verdict
    with open(f"{stem}.md", "w") as f:
        f.write(f"# Task suite (seeds {sorted(per_seed)}, mean ± std)\n{text}")
    plot(table, args.tasks, f"{stem}.png")
    print(text)
    print(f"Wrote {stem}.json/.md/.png in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
