"""The objective protocol of issue #23: which distillation objective should be the default, decided by a rule written
before the run (benchmarks/protocol_rule.md) and applied to validation results only.

What runs, per geometry and seed (one job each; jobs run in parallel worker processes):

1. Teachers. A tiny native model of the family (LLaDA for `llada_b32`: bidirectional, blocks of 32 over a 64-token
   canvas; SDAR for `sdar_b4`: block-causal, blocks of 4 over the same canvas) is pretrained from scratch with the
   masked-diffusion loss (trl_t3d's toy pretraining pieces) on the training split of every task. Every
   `--teacher_eval_every` steps its one-token-per-step accuracy is measured on the VALIDATION split; the snapshot whose
   per-task accuracies lie closest to the 65-85% band is the *inexact* teacher (trained short on purpose, its step
   count picked by this measurement) and the final model is the *near-exact* teacher (>= 90%). Floors are per task:
   a (teacher, task) pair outside its band is reported and dropped from that cell only.
2. Trajectories. Each teacher decodes training prompts one token per step at the geometry's block (collection).
3. Students. Every method trains from its teacher's weights on the same trajectories through the public `DDOTrainer`
   (`loss_type` / `preset` switch the objective): first at EQUAL OPTIMIZER STEPS, in a rotated order so step times
   are measured interleaved on the same device; then at EQUAL WALL TIME: each method gets
   `round(steps * t_default / t_method)` steps, where t is the method's median step time measured in this job.
4. Evaluation on the validation AND test splits, each decoded once per final configuration: 1/2/4(/8) tokens per
   step, and Fast-dLLM threshold decoding (thresholds 0.9/0.7/0.5) with tokens per forward, AUP and calibration.
   Calibration: expected calibration error (10 bins) of committed tokens, where a token's confidence is the model's
   probability of it at the step it was committed (recomputed from the decoder's state at that step) and a token
   counts as correct iff the verifier accepts its whole sequence (so a student choosing another valid answer is not
   penalized; per-token agreement with the teacher is not used).

Then seeds are aggregated (mean ± 95% t-interval), the rule is applied to validation means and the test tables are
reported beside it: benchmarks/results/objective_protocol.{json,md,png}.

Tasks: `multistep_sum` (GSM8K-like: "sum:35472" -> "3+5=8;8+4=12;...;#21": one correct final answer, three valid
orders of the intermediate steps, scored on the final answer only), `paraphrase` (24 valid sentences per meaning,
active/passive/perfect templates x synonyms); the task suite's tasks (arithmetic, reverse, permutation_skewed,
two_way_sort, phrase) stay available through `--tasks`.

Commands:

    python benchmarks/objective_protocol.py --quick                  # CPU smoke run, 2 seeds, tiny sizes
    python benchmarks/objective_protocol.py --device cuda --workers 12   # full protocol (5 seeds) on one GPU

Measured cost on this 2-core CPU (OMP_NUM_THREADS=1): `--quick --workers 2` took 9 min 25 s (4 jobs, untrained
teachers: a smoke test of the pipeline, not a result). The run behind `benchmarks/results/objective_protocol.*`,
`--workers 2 --sum_operands 3 --val_prompts 48 --test_prompts 48 --student_steps 100 --trajectories_per_task 256`,
took 4550 s for 10 jobs. Teacher learning rates and step counts are per geometry (`GEOMETRIES`, from a teacher-only
pilot): the SDAR teachers reached their bands; no LLaDA teacher did at hidden 64 and 5000 steps, so check
`teacher_log.curve` in the JSON and raise --teacher_steps / --hidden_size where cells are dropped. Finished jobs are
saved in `{tag}_jobs/` and the same command resumes from them (`--aggregate_only` reports without running new ones).
Results depend on the machine only through the equal-wall-time step counts, which each job measures itself,
interleaved, on the device it runs on.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:  # the toy tasks and pretraining moved to trl_t3d.toy; older trees keep them in evaluation/ and pretraining.py
    from trl_t3d.toy.pretraining import build_examples, collate, masked_diffusion_loss, toy_distillation_config
    from trl_t3d.toy.tasks import get_task
except ImportError:  # pragma: no cover - before the move
    from trl_t3d.pretraining import build_examples, collate, masked_diffusion_loss, toy_distillation_config

    from trl_t3d.evaluation.tasks import get_task

from _common import collect_toy_trajectories  # noqa: E402
from task_suite import THRESHOLDS  # noqa: E402  (the suite's threshold-decoding settings)

from trl_t3d.evaluation import Task  # noqa: E402

RULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol_rule.md")
INCUMBENT = "t3d_mf"  # the default when the rule was written: the candidate the rule tests, and the wall-time budget
METHODS: dict[str, dict] = {
    "ntd": {"loss_type": "ntd"},
    "t3d": {"loss_type": "t3d"},
    "t3d_paper": {"preset": "t3d_paper"},
    "t3d_mf": {"loss_type": "t3d_mf"},
    "tad": {"loss_type": "tad"},
    "sft": {"loss_type": "sft"},
}
COST_ORDER = ("sft", "ntd", "tad", "t3d", "t3d_paper", "t3d_mf")  # cheapest first (forwards per step), ties by name
ALTERNATIVES = ("t3d", "t3d_paper")
GEOMETRIES = {
    # teacher_lr / teacher_steps: from a pilot of teacher training only (the bidirectional LLaDA teacher learned the
    # tasks at 1e-3, not at 3e-3)
    "llada_b32": {
        "family": "llada",
        "canvas": 64,
        "block": 32,
        "budgets": (1, 2, 4, 8),
        "teacher_lr": 1e-3,
        "teacher_steps": 5000,
    },
    "sdar_b4": {
        "family": "sdar",
        "canvas": 64,
        "block": 4,
        "budgets": (1, 2, 4),
        "teacher_lr": 3e-3,
        "teacher_steps": 3000,
    },
}
NEW_TASKS = ("multistep_sum", "paraphrase")
SUITE_TASKS = ("arithmetic", "reverse", "permutation_skewed", "two_way_sort", "phrase")
MANY_ANSWER_TASKS = ("multistep_sum", "paraphrase", "permutation_skewed", "two_way_sort", "phrase")
EXACT_FLOOR, INEXACT_BAND = 90.0, (65.0, 85.0)
BATCH = 256  # prompts decoded together


# ------------------------------------------------------------------------------------------------ tasks
def _split_of(prompt: str) -> str:
    """Stable three-way split of the prompt space (seed-independent): ~80% train, ~10% validation, ~10% test."""
    bucket = zlib.crc32(prompt.encode()) % 100
    return "train" if bucket < 80 else ("validation" if bucket < 90 else "test")


def _draw(make_one, num: int, split: str, seed: int) -> list[tuple[str, str]]:
    rng, rows, seen = random.Random(f"{seed}-{split}"), [], set()
    for _ in range(200 * num + 1000):
        prompt, target = make_one(rng)
        if _split_of(prompt) == split and (split == "train" or prompt not in seen):
            seen.add(prompt)
            rows.append((prompt, target))
            if len(rows) == num:
                return rows
    raise ValueError(f"Could not draw {num} '{split}' prompts.")


SUM_ORDERS = ((0.45, "given"), (0.30, "reversed"), (0.25, "ascending"))


def multistep_sum_task(num: int, split: str, seed: int = 0, operands: int = 5) -> Task:
    """GSM8K-like: add `operands` digits step by step ("3+5=8;8+4=12;...;#21"). The steps may come in three orders
    (as given, reversed, ascending; training targets follow `SUM_ORDERS`' weights); only the final answer is scored."""

    def make_one(rng):
        digits = [rng.randrange(1, 10) for _ in range(operands)]
        order = rng.choices([o for _, o in SUM_ORDERS], weights=[w for w, _ in SUM_ORDERS])[0]
        seq = {"given": digits, "reversed": digits[::-1], "ascending": sorted(digits)}[order]
        steps, total = [], seq[0]
        for d in seq[1:]:
            steps.append(f"{total}+{d}={total + d}")
            total += d
        return "sum:" + "".join(map(str, digits)), ";".join(steps) + f";#{total}"

    rows = _draw(make_one, num, split, seed)

    def verify(completion: str, reference) -> bool:
        return completion.rsplit("#", 1)[-1].strip() == str(reference) if "#" in completion else False

    return Task(
        name="multistep_sum",
        prompts=[p for p, _ in rows],
        references=[sum(int(c) for c in p[4:]) for p, _ in rows],
        verifier=verify,
        targets=[t for _, t in rows],
        metadata={"split": split, "seed": seed},
    )


SUBJECTS = (("cat", "kitty"), ("dog", "puppy"), ("boy", "lad"), ("girl", "lass"))
VERBS = (("chased", "pursued"), ("spotted", "noticed"), ("grabbed", "seized"), ("pushed", "shoved"))
OBJECTS = (("ball", "sphere"), ("mouse", "rodent"), ("cake", "pastry"), ("car", "auto"))
TEMPLATES = ("the {s} {v} the {o}.", "the {o} was {v} by the {s}.", "the {s} has {v} the {o}.")


def paraphrases(s: int, v: int, o: int) -> list[str]:
    return [
        t.format(s=sw, v=vw, o=ow) for t in TEMPLATES for sw in SUBJECTS[s] for vw in VERBS[v] for ow in OBJECTS[o]
    ]


def paraphrase_task(num: int, split: str, seed: int = 0) -> Task:
    """Paraphrase-rich: "para:213.42" (meaning = subject 2, verb 1, object 3; ".42" only makes prompts unique) ->
    any of 24 sentences (3 templates x 2 synonyms per word), drawn uniformly for training targets."""

    def make_one(rng):
        s, v, o = rng.randrange(4), rng.randrange(4), rng.randrange(4)
        return f"para:{s}{v}{o}.{rng.randrange(100):02d}", rng.choice(paraphrases(s, v, o))

    rows = _draw(make_one, num, split, seed)
    return Task(
        name="paraphrase",
        prompts=[p for p, _ in rows],
        references=[paraphrases(*(int(c) for c in p[5:8])) for p, _ in rows],
        verifier="one_of",
        targets=[t for _, t in rows],
        metadata={"split": split, "seed": seed},
    )


def make_task(name: str, num: int, split: str, seed: int = 0, sum_operands: int = 5) -> Task:
    """A task's train/validation/test split. The suite's tasks keep their own train/test hash; their held-out side is
    cut in two (validation/test) by a second stable hash of the prompt."""
    if name == "multistep_sum":
        return multistep_sum_task(num, split, seed, operands=sum_operands)
    if name == "paraphrase":
        return paraphrase_task(num, split, seed)
    if split == "train":
        return get_task(name, num_examples=num, split="train", seed=seed)
    pool = get_task(name, num_examples=4 * num, split="test", seed=seed)
    want = 0 if split == "validation" else 1
    keep = [i for i, p in enumerate(pool.prompts) if zlib.crc32(f"v{p}".encode()) % 2 == want][:num]
    return pool.subset(keep)


# ------------------------------------------------------------------------------------------------ models
def new_model(family: str, tokenizer, args, seed: int):
    from trl_t3d import testing

    make = {"llada": testing.make_llada, "sdar": testing.make_sdar}[family]
    return make(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4, seed=seed)


def decode(model, tokenizer, segments: dict, geometry: dict, k: int = 1, threshold=None, calibrate=False) -> dict:
    """Greedy low-confidence decoding of the prompts of every segment (`{name: Task}`, e.g. every split and task)
    together, in batches of `BATCH`: per segment, accuracy (%), tokens per forward and (with `calibrate`) the expected
    calibration error of committed tokens.

    A row's forwards are the forwards that committed at least one of its tokens (what it costs decoded alone; every
    forward commits one token or more of each unfinished row), so mixing tasks in a batch does not change them."""
    from trl_t3d import DiffusionGenerationConfig
    from trl_t3d.adapters import get_adapter
    from trl_t3d.evaluation.evaluate import _completion_text
    from trl_t3d.generation import diffusion_generate

    rule = dict(threshold=threshold, threshold_rule="fast_dllm") if threshold is not None else {}
    config = DiffusionGenerationConfig(
        max_new_tokens=geometry["canvas"],
        block_length=geometry["block"],
        tokens_per_step=1 if threshold is not None else k,
        temperature=0.0,
        remasking="low_confidence",
        output_step_map=True,
        return_dict_in_generate=True,
        **rule,
    )
    adapter = get_adapter(model, tokenizer=tokenizer)
    device = next(model.parameters()).device
    rows_all = [(name, i, ids) for name, task in segments.items() for i, ids in enumerate(task.prompt_ids(tokenizer))]
    rows_all.sort(key=lambda row: len(row[2]))
    eos = {tokenizer.eos_token_id}
    stats = {name: {"correct": 0, "n": 0, "committed": 0, "forwards": 0, "pairs": []} for name in segments}
    for start in range(0, len(rows_all), BATCH):
        rows = rows_all[start : start + BATCH]
        width = max(len(r[2]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (_, _, p) in enumerate(rows):
            ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
        ids, mask = ids.to(device), mask.to(device)
        states = []
        with torch.no_grad():
            out = diffusion_generate(
                model,
                ids,
                mask,
                config,
                adapter=adapter,
                processing_class=tokenizer,
                step_callback=(lambda step, canvas, undecided, keep=states.append: keep(canvas))
                if calibrate
                else None,
            )
        completion, step_map = out.sequences[:, width:], out.step_map
        ok = []
        for r, (name, i, _) in enumerate(rows):
            text = _completion_text(tokenizer, completion[r].tolist(), eos)
            ok.append(bool(segments[name].verify(text, i)))
            row_steps = step_map[r][step_map[r] >= 0]
            entry = stats[name]
            entry["correct"] += ok[-1]
            entry["n"] += 1
            entry["committed"] += int(row_steps.numel())
            entry["forwards"] += int(row_steps.unique().numel())
        if calibrate:
            pairs = _committed_confidences(model, adapter, ids, mask, completion, step_map, states, geometry, ok)
            for r, pair in pairs:
                stats[rows[r][0]]["pairs"].append(pair)
    out = {}
    for name, entry in stats.items():
        out[name] = {
            "accuracy": 100 * entry["correct"] / max(1, entry["n"]),
            "tokens_per_forward": entry["committed"] / max(1, entry["forwards"]),
        }
        if calibrate:
            out[name]["ece"] = expected_calibration_error(entry["pairs"])
    return out


def _committed_confidences(model, adapter, ids, mask, completion, step_map, states, geometry, ok):
    """Recompute, from the decoder's state before each forward, the probability of every token committed there."""
    mask_id = adapter.mask_token_id
    pairs = []
    with torch.no_grad():
        for step, canvas in enumerate(states):
            chosen = step_map == step
            if not bool(chosen.any()):
                continue
            logits = adapter.completion_logits(
                model, ids, mask, canvas.to(ids.device), clean_completion=completion, block_length=geometry["block"]
            ).float()
            if mask_id is not None and mask_id < logits.shape[-1]:
                logits[..., mask_id] = float("-inf")  # the decoder never proposes the mask token
            probs = logits.softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
            for r, c in zip(*chosen.nonzero(as_tuple=True)):
                pairs.append((int(r), (float(probs[r, c]), ok[int(r)])))
    return pairs


def expected_calibration_error(pairs, bins: int = 10) -> float:
    if not pairs:
        return float("nan")
    total, ece = len(pairs), 0.0
    for b in range(bins):
        inside = [(p, y) for p, y in pairs if (b / bins < p <= (b + 1) / bins) or (b == 0 and p == 0)]
        if inside:
            conf = sum(p for p, _ in inside) / len(inside)
            acc = sum(y for _, y in inside) / len(inside)
            ece += len(inside) / total * abs(conf - acc)
    return 100 * ece


def evaluate(model, tokenizer, splits: dict, geometry: dict, args) -> dict:
    """`{split: {"{task}/k{k}" or "{task}/t{threshold}": result}}`: every split and task decoded in one batch per
    decoding setting (each split decoded once per model)."""
    segments = {f"{split}|{name}": task for split, tasks in splits.items() for name, task in tasks.items()}
    out = {split: {} for split in splits}
    settings = [(f"k{k}", dict(k=k)) for k in geometry["budgets"]]
    settings += [(f"t{t}", dict(threshold=t, calibrate=True)) for t in args.thresholds]
    for label, kwargs in settings:
        for segment, result in decode(model, tokenizer, segments, geometry, **kwargs).items():
            split, name = segment.split("|")
            out[split][f"{name}/{label}"] = result
    return out


# ------------------------------------------------------------------------------------------------ stages
def train_teachers(geometry_name: str, seed: int, args, val_tasks: dict):
    """(exact teacher, inexact teacher, log): pretraining with validation checkpoints; see the module docstring."""
    from trl_t3d.adapters import get_adapter
    from trl_t3d.testing import make_tokenizer

    geometry = GEOMETRIES[geometry_name]
    tokenizer = make_tokenizer()
    model = new_model(geometry["family"], tokenizer, args, seed).to(args.device)
    train_tasks = [make_task(n, args.train_examples, "train", seed, args.sum_operands) for n in args.tasks]
    examples = build_examples(train_tasks, tokenizer, geometry["canvas"])
    adapter = get_adapter(model, tokenizer=tokenizer)
    generator = torch.Generator().manual_seed(seed)
    lr = args.teacher_lr or geometry["teacher_lr"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    total = args.teacher_steps or geometry["teacher_steps"]
    every = args.teacher_eval_every or max(1, total // 10)
    warmup = min(100, total // 10)
    cosine = lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / total))  # noqa: E731  (to 10% at the end: steadier)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * cosine(s))
    curve, best = [], None
    for step in range(1, total + 1):
        model.train()
        index = torch.randint(len(examples), (args.batch_size,), generator=generator).tolist()
        batch = collate([examples[i] for i in index], adapter.pad_token_id, args.device)
        loss = masked_diffusion_loss(model, adapter, *batch, generator, weighting="mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % every == 0 or step == total:
            model.eval()
            scores = {n: r["accuracy"] for n, r in decode(model, tokenizer, val_tasks, geometry).items()}
            distance = sum(max(0.0, INEXACT_BAND[0] - a, a - INEXACT_BAND[1]) for a in scores.values())
            curve.append({"step": step, "validation_1tok": scores, "band_distance": distance})
            if step < total and (best is None or distance < best[0]):
                best = (distance, step, copy.deepcopy(model).eval())
    model.eval()
    if best is None:
        best = (None, total, copy.deepcopy(model))
    return model, best[2], tokenizer, {"curve": curve, "exact_steps": total, "inexact_steps": best[1]}


def collect(teacher, tokenizer, geometry: dict, args, seed: int):
    from trl_t3d import DiffusionGenerationConfig

    config = DiffusionGenerationConfig(
        max_new_tokens=geometry["canvas"], block_length=geometry["block"], tokens_per_step=1
    )
    tasks = (make_task(name, args.trajectories_per_task, "train", seed + 1, args.sum_operands) for name in args.tasks)
    return collect_toy_trajectories(teacher, tokenizer, tasks, lambda task: config).shuffle(seed=seed)


class StepTimer:
    """A TrainerCallback recording each optimizer step's wall time (device synchronized)."""

    def __init__(self):
        self.times, self._start = [], None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)

    def __getattr__(self, name):  # every other TrainerCallback event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def median(self) -> float:
        times = self.times[min(2, len(self.times) - 1) :]  # drop warm-up steps
        return statistics.median(times)


def train_student(teacher, tokenizer, trajectories, args, seed: int, method: str, steps: int):
    from trl_t3d import DDOTrainer

    settings = dict(METHODS[method])
    config = toy_distillation_config(
        tempfile.mkdtemp(prefix=f"protocol_{method}_"),
        steps,
        args.batch_size,
        args.learning_rate,
        seed,
        logging_steps=max(1, steps),
        activation_checkpointing=False,
        use_cpu=args.device == "cpu",
        **settings,
    )
    timer = StepTimer()
    trainer = DDOTrainer(
        copy.deepcopy(teacher), args=config, train_dataset=trajectories, processing_class=tokenizer, callbacks=[timer]
    )
    trainer.train()
    return trainer.model.eval(), timer.median()


def run_job(job: dict) -> dict:
    """One (geometry, seed): both teachers, every method at equal steps and equal wall time, validation + test."""
    args = argparse.Namespace(**job["args"])
    torch.set_num_threads(args.threads)
    geometry_name, seed = job["geometry"], job["seed"]
    geometry = GEOMETRIES[geometry_name]
    torch.manual_seed(seed)
    started = time.perf_counter()
    splits = {
        split: {n: make_task(n, num, split, 0, args.sum_operands) for n in args.tasks}
        for split, num in (("validation", args.val_prompts), ("test", args.test_prompts))
    }
    exact, inexact, tokenizer, log = train_teachers(geometry_name, seed, args, splits["validation"])
    out = {"geometry": geometry_name, "seed": seed, "teacher_log": log, "results": {}, "step_time_s": {}, "steps": {}}
    for quality, teacher in (("exact", exact), ("inexact", inexact)):
        res = {split: {} for split in splits}

        def record(name, model, res=res):
            for split, values in evaluate(model, tokenizer, splits, geometry, args).items():
                res[split][name] = values

        record("teacher", teacher)
        trajectories = collect(teacher, tokenizer, geometry, args, seed)
        methods = list(args.methods)
        shift = seed % len(methods)
        order = methods[shift:] + methods[:shift]  # rotated per seed: step times measured interleaved
        times, students = {}, {}
        for method in order:
            students[method], times[method] = train_student(
                teacher, tokenizer, trajectories, args, seed, method, args.student_steps
            )
        budget = times.get(INCUMBENT, max(times.values()))
        equal_time_steps = {m: max(1, round(args.student_steps * budget / times[m])) for m in methods}
        for method in order:
            record(f"{method}@steps", students[method])
            if equal_time_steps[method] == args.student_steps:
                for split in splits:
                    res[split][f"{method}@time"] = res[split][f"{method}@steps"]
            else:
                student, _ = train_student(
                    teacher, tokenizer, trajectories, args, seed, method, equal_time_steps[method]
                )
                record(f"{method}@time", student)
        out["results"][quality] = res
        out["step_time_s"][quality] = times
        out["steps"][quality] = equal_time_steps
    out["wall_time_s"] = time.perf_counter() - started
    return out


# ------------------------------------------------------------------------------------------------ statistics
def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); half-width 0 for one value."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def teacher_in_band(job: dict, quality: str, task: str, args) -> bool:
    if args.ignore_teacher_bands:
        return True
    accuracy = job["results"][quality]["validation"]["teacher"][f"{task}/k1"]["accuracy"]
    return accuracy >= EXACT_FLOOR if quality == "exact" else INEXACT_BAND[0] <= accuracy <= INEXACT_BAND[1]


def aup_of(results: dict, task: str, y_max: float, thresholds) -> float:
    from trl_t3d.evaluation.report import aup

    points = [results[f"{task}/k1"]] + [results[f"{task}/t{t}"] for t in thresholds]
    return aup([p["tokens_per_forward"] for p in points], [p["accuracy"] for p in points], y_max=y_max)


def aggregate(jobs: list[dict], args) -> dict:
    """cells[geometry][quality][task][split][model][metric] = (mean, half-width, n) over seeds whose teacher is in
    band on that task (per-task floors)."""
    cells = {}
    for geometry in args.geometries:
        for quality in ("exact", "inexact"):
            for task in args.tasks:
                kept = [j for j in jobs if j["geometry"] == geometry and teacher_in_band(j, quality, task, args)]
                dropped = [j["seed"] for j in jobs if j["geometry"] == geometry and j not in kept]
                entry = {"seeds": [j["seed"] for j in kept], "dropped_seeds": dropped, "splits": {}}
                for split in ("validation", "test"):
                    per_model = {}
                    for model in kept[0]["results"][quality][split] if kept else []:
                        metrics = {}
                        labels = [f"k{k}" for k in GEOMETRIES[geometry]["budgets"]] + [
                            f"t{t}" for t in args.thresholds
                        ]
                        for label in labels:
                            for field in ("accuracy", "tokens_per_forward", "ece"):
                                values = [
                                    j["results"][quality][split][model][f"{task}/{label}"].get(field) for j in kept
                                ]
                                values = [v for v in values if v is not None and not math.isnan(v)]
                                if values:
                                    metrics[f"{label}/{field}"] = (*t_interval(values), len(values))
                        aups = []
                        for j in kept:
                            models = j["results"][quality][split]
                            y_max = max(
                                models[m][f"{task}/{lab}"]["accuracy"]
                                for m in models
                                for lab in ["k1"] + [f"t{t}" for t in args.thresholds]
                            )
                            aups.append(aup_of(models[model], task, y_max, args.thresholds))
                        metrics["aup"] = (*t_interval(aups), len(aups))
                        per_model[model] = metrics
                    entry["splits"][split] = per_model
                cells.setdefault(geometry, {}).setdefault(quality, {})[task] = entry
    return cells


# ------------------------------------------------------------------------------------------------ the rule
def goals(cell: dict, method: str) -> dict | None:
    """protocol_rule.md's goals G1-G3 of `method` at equal wall time in one cell (validation means)."""
    models = cell["splits"].get("validation", {})
    if f"{method}@time" not in models or "ntd@time" not in models:
        return None
    acc = lambda m, k: models[m][f"k{k}/accuracy"][0]  # noqa: E731
    me, ntd = f"{method}@time", "ntd@time"
    out = {
        "G1": all(acc(me, k) >= acc(ntd, k) - 1.0 for k in (2, 4)),
        "G3": acc(me, 1) >= acc("teacher", 1) - 2.0,
        "acc4": acc(me, 4),
        "acc1": acc(me, 1),
    }
    if cell["task"] in MANY_ANSWER_TASKS:
        out["G2"] = acc(me, 4) >= acc(ntd, 4) + 5.0
    out["pass"] = all(out[g] for g in ("G1", "G2", "G3") if g in out)
    return out


def apply_rule(cells: dict, methods: list[str]) -> dict:
    """protocol_rule.md, steps 1-4, on validation results only."""
    per_geometry, details = {}, {}
    for geometry, qualities in cells.items():
        scores = {}
        for method in methods:
            passed, acc4, acc1, rows = 0, [], [], {}
            for quality, tasks in qualities.items():
                for task, cell in tasks.items():
                    g = goals({**cell, "task": task}, method)
                    if g is None:
                        continue
                    rows[f"{quality}/{task}"] = g
                    passed += g["pass"]
                    acc4.append(g["acc4"])
                    acc1.append(g["acc1"])
            if rows:
                scores[method] = {
                    "passed": passed,
                    "cells": len(rows),
                    "mean_acc4": statistics.mean(acc4),
                    "mean_acc1": statistics.mean(acc1),
                    "goals": rows,
                }
        per_geometry[geometry] = _rank(scores)
        details[geometry] = scores
    # Step 2: does the current default keep its place?
    keeps = bool(per_geometry)
    reasons = []
    for geometry, scores in details.items():
        if INCUMBENT not in scores:
            keeps = False
            reasons.append(f"{geometry}: {INCUMBENT} not run")
            continue
        for cell, g in scores[INCUMBENT]["goals"].items():
            if not g["pass"] and any(s["goals"].get(cell, {}).get("pass") for s in scores.values()):
                keeps = False
                reasons.append(f"{geometry}/{cell}: {INCUMBENT} fails goals another candidate meets")
            for alt in ALTERNATIVES:
                other = scores.get(alt, {}).get("goals", {}).get(cell)
                if other and g["acc1"] < other["acc1"] - 1.0:
                    keeps = False
                    reasons.append(
                        f"{geometry}/{cell}: {INCUMBENT} loses {other['acc1'] - g['acc1']:.1f} points at 1 tok/step to {alt}"
                    )
    if keeps:
        default = INCUMBENT
    else:  # Step 3: the best supported alternative over all geometries
        total = {
            alt: (
                sum(details[g].get(alt, {}).get("passed", 0) for g in details),
                sum(details[g].get(alt, {}).get("mean_acc4", 0.0) for g in details),
                sum(details[g].get(alt, {}).get("mean_acc1", 0.0) for g in details),
            )
            for alt in ALTERNATIVES
            if any(alt in details[g] for g in details)
        }
        default = max(total, key=lambda a: (total[a], a == "t3d")) if total else None
    winners = {g: ranking[0] if ranking else None for g, ranking in per_geometry.items()}
    per_geometry_recommendation = winners if len(set(winners.values())) > 1 else None
    return {
        "default": default,
        "current_default_keeps_its_place": keeps,
        "reasons": reasons,
        "ranking_per_geometry": per_geometry,
        "per_geometry_recommendation": per_geometry_recommendation,
        "scores": details,
    }


def _rank(scores: dict) -> list[str]:
    """Step 1: cells passed, then mean accuracy at 4 tok/step, then at 1; a tie within 0.5 point on both goes to the
    cheaper objective."""
    cost = {m: COST_ORDER.index(m) if m in COST_ORDER else len(COST_ORDER) for m in scores}
    ranked = sorted(scores, key=lambda m: (-scores[m]["passed"], -scores[m]["mean_acc4"], -scores[m]["mean_acc1"]))
    for i in range(len(ranked) - 1):  # bubble cheaper objectives up through near-ties
        for j in range(len(ranked) - 1 - i):
            a, b = scores[ranked[j]], scores[ranked[j + 1]]
            tie = (
                a["passed"] == b["passed"]
                and abs(a["mean_acc4"] - b["mean_acc4"]) <= 0.5
                and abs(a["mean_acc1"] - b["mean_acc1"]) <= 0.5
            )
            if tie and cost[ranked[j + 1]] < cost[ranked[j]]:
                ranked[j], ranked[j + 1] = ranked[j + 1], ranked[j]
    return ranked


# ------------------------------------------------------------------------------------------------ report
def _fmt(metrics: dict, key: str, digits: int = 1) -> str:
    if key not in metrics:
        return "—"
    mean, half, _ = metrics[key]
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def markdown(cells: dict, verdict: dict, jobs: list[dict], args) -> str:
    lines = [
        f"# Objective protocol ({'quick' if args.quick else 'full'} run, seeds {args.seeds}, device {args.device})\n",
        "Mean ± 95% t-interval over the seeds whose teacher is in band on the task (exact >= 90, inexact 65-85 at one "
        "token per step on validation). `@steps`: equal optimizer steps; `@time`: equal wall time (the default's "
        "measured step-time budget). ECE: committed tokens, correct = the verifier accepts the sequence. "
        f"Rule: {os.path.relpath(RULE_FILE)}, applied to validation only."
        + (
            " **Teacher bands ignored (--ignore_teacher_bands): not a protocol result.**"
            if args.ignore_teacher_bands
            else ""
        )
        + "\n",
        f"## Verdict (validation)\n\n- default: **{verdict['default']}** (current default `{INCUMBENT}` keeps its place: "
        f"{verdict['current_default_keeps_its_place']})",
    ]
    lines += [f"- {r}" for r in verdict["reasons"][:20]]
    for geometry, ranking in verdict["ranking_per_geometry"].items():
        scores = verdict["scores"][geometry]
        lines.append(
            f"- {geometry}: " + ", ".join(f"{m} ({scores[m]['passed']}/{scores[m]['cells']} cells)" for m in ranking)
        )
    if verdict["per_geometry_recommendation"]:
        lines.append(f"- per-geometry recommendation: {verdict['per_geometry_recommendation']}")
    lines.append("\n## Equal-wall-time step counts (median step time, s)\n")
    for job in jobs:
        for quality in ("exact", "inexact"):
            times = job["step_time_s"][quality]
            lines.append(
                f"- {job['geometry']} seed {job['seed']} {quality}: "
                + ", ".join(f"{m} {times[m] * 1000:.0f} ms → {job['steps'][quality][m]}" for m in times)
            )
    for split in ("validation", "test"):
        lines.append(f"\n## {split.capitalize()}\n")
        for geometry, qualities in cells.items():
            budgets = GEOMETRIES[geometry]["budgets"]
            for quality, tasks in qualities.items():
                for task, cell in tasks.items():
                    models = cell["splits"].get(split, {})
                    if not models:
                        lines.append(f"\n{geometry} / {quality} teacher / {task}: no seed in band\n")
                        continue
                    lines.append(
                        f"\n### {geometry} / {quality} teacher / {task} (seeds {cell['seeds']}, "
                        f"dropped {cell['dropped_seeds']})\n"
                    )
                    head = (
                        [f"{k} tok/step" for k in budgets]
                        + [f"t={t} acc (TPF, ECE)" for t in args.thresholds]
                        + ["AUP"]
                    )
                    lines += ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
                    for model, m in models.items():
                        cells_ = [_fmt(m, f"k{k}/accuracy") for k in budgets]
                        cells_ += [
                            f"{_fmt(m, f't{t}/accuracy')} ({m[f't{t}/tokens_per_forward'][0]:.2f}, "
                            f"{_fmt(m, f't{t}/ece')})"
                            for t in args.thresholds
                        ]
                        lines.append(f"| {model} | " + " | ".join(cells_ + [_fmt(m, "aup", 0)]) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(g, q, t) for g, qs in cells.items() for q, ts in qs.items() for t in ts]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    for ax, (g, q, t) in zip(axes.flat, panels):
        models = cells[g][q][t]["splits"].get("validation", {})
        budgets = GEOMETRIES[g]["budgets"]
        for model, m in models.items():
            if model.endswith("@steps"):
                continue
            ax.plot(budgets, [m[f"k{k}/accuracy"][0] for k in budgets], marker="o", label=model.replace("@time", ""))
        ax.set_title(f"{g} {q} {t}", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 102)
        ax.set_xlabel("tokens per step (validation, equal time)", fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke run: 2 seeds, tiny sizes (tests the script).")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workers", type=int, default=1, help="Parallel jobs (one per geometry and seed).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    p.add_argument("--tasks", nargs="+", default=list(NEW_TASKS), choices=list(NEW_TASKS + SUITE_TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument(
        "--sum_operands", type=int, default=5, help="Digits added by `multistep_sum` (steps = operands - 1)."
    )
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument(
        "--teacher_steps", type=int, default=None, help="Teacher pretraining steps (default: the geometry's)."
    )
    p.add_argument(
        "--teacher_eval_every", type=int, default=None, help="Validation checkpoints every N steps (default: 1/10)."
    )
    p.add_argument("--teacher_lr", type=float, default=None, help="Teacher learning rate (default: the geometry's).")
    p.add_argument("--train_examples", type=int, default=20000)
    p.add_argument("--trajectories_per_task", type=int, default=256)
    p.add_argument("--student_steps", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS), help="Fast-dLLM thresholds.")
    p.add_argument("--val_prompts", type=int, default=64)
    p.add_argument("--test_prompts", type=int, default=64)
    p.add_argument(
        "--ignore_teacher_bands",
        action="store_true",
        help="Keep every seed in every cell whatever its teacher scores (set by --quick, whose teachers are untrained).",
    )
    p.add_argument(
        "--aggregate_only", action="store_true", help="Report from the saved jobs only (no new job is run)."
    )
    p.add_argument("--output_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--tag", default=None, help="Output stem (default objective_protocol, or ..._quick).")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:2] if len(args.seeds) > 2 else args.seeds
        args.hidden_size, args.teacher_steps, args.teacher_eval_every = 32, 120, 40
        args.trajectories_per_task, args.student_steps, args.batch_size = 32, 6, 8
        args.val_prompts = args.test_prompts = 8
        args.thresholds = [0.9]
        args.ignore_teacher_bands = True
        args.train_examples = 2000
    args.tag = args.tag or ("objective_protocol_quick" if args.quick else "objective_protocol")
    cores = os.cpu_count() or 1
    args.threads = max(1, cores // max(1, args.workers))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if len(args.seeds) < 5 and not args.quick:
        print(f"warning: {len(args.seeds)} seeds; the protocol asks for >= 5.", file=sys.stderr)
    with open(RULE_FILE) as f:
        rule_text = f.read()
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.perf_counter()
    # seed-major, so parallel workers run both geometries of a seed together; every finished job is saved at once
    # (`{tag}_jobs/`) and a rerun of the same command resumes from the saved jobs
    jobs_dir = os.path.join(args.output_dir, f"{args.tag}_jobs")
    os.makedirs(jobs_dir, exist_ok=True)
    job_path = lambda g, s: os.path.join(jobs_dir, f"{g}_seed{s}.json")  # noqa: E731
    done = []
    jobs_in = []
    for s in args.seeds:
        for g in args.geometries:
            if os.path.exists(job_path(g, s)):
                with open(job_path(g, s)) as f:
                    done.append(json.load(f))
            elif not args.aggregate_only:
                jobs_in.append({"geometry": g, "seed": s, "args": vars(args)})
    if done:
        print(f"Resumed {len(done)} saved jobs from {jobs_dir}", flush=True)
    elif args.aggregate_only:
        raise SystemExit(f"--aggregate_only: no saved job in {jobs_dir}; run without it first (or pass that --tag).")
    finished_here = []

    def finish(result):
        with open(job_path(result["geometry"], result["seed"]), "w") as f:
            json.dump(result, f, default=str)
        done.append(result)
        finished_here.append(result)
        elapsed = time.perf_counter() - started
        eta = elapsed / len(finished_here) * (len(jobs_in) - len(finished_here))
        print(f"[{len(finished_here)}/{len(jobs_in)} jobs] elapsed {elapsed:.0f} s, ETA {eta:.0f} s", flush=True)

    if args.workers > 1 and len(jobs_in) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for result in pool.imap_unordered(run_job, jobs_in):
                finish(result)
    else:
        for job in jobs_in:
            finish(run_job(job))
    done.sort(key=lambda j: (j["geometry"], j["seed"]))
    cells = aggregate(done, args)
    verdict = apply_rule(cells, [m for m in args.methods])
    stem = os.path.join(args.output_dir, args.tag)
    wall = time.perf_counter() - started
    with open(f"{stem}.json", "w") as f:
        json.dump(
            {
                "command": " ".join(["python", "benchmarks/objective_protocol.py", *(argv or sys.argv[1:])]),
                "settings": vars(args),
                "rule_file": os.path.relpath(RULE_FILE),
                "rule_crc32": f"{zlib.crc32(rule_text.encode()):08x}",
                "methods": {m: METHODS[m] for m in args.methods},
                "verdict": verdict,
                "cells": cells,
                "jobs": done,
                "wall_time_s": wall,
            },
            f,
            indent=1,
            default=str,
        )
    text = markdown(cells, verdict, done, args)
    with open(f"{stem}.md", "w") as f:
        f.write(text)
    plot(cells, f"{stem}.png")
    print(text[:4000])
    print(f"Wrote {stem}.json/.md/.png in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
