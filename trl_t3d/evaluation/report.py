"""Frontier reports: AUP, the accuracy-vs-parallelism plot, and markdown tables.

AUP (Accuracy Under Parallelism) is the metric of d3LLM (Qian et al., "AUP: when Accuracy Meets Parallelism in
Diffusion Language Models", hao-ai-lab blog, 2025; https://github.com/hao-ai-lab/d3LLM). For parallelism-accuracy
pairs (rho_i, y_i) sorted by rho (tokens per forward, TPF) with y in percent:

1. keep only points with y_i >= y_min = y_1 - 5 (y_1: the accuracy at the lowest parallelism), so regimes of large
   degradation are not measured;
2. AUP = rho_1 * y_1 + 1/2 * sum_{i>=2} (rho_i - rho_{i-1}) * (y_i W(y_i) + y_{i-1} W(y_{i-1})),
   with W(y) = min(exp(-alpha (1 - y / y_max)), 1), alpha = 3, and y_max the best accuracy any method reaches on
   the task (pass it to compare several models fairly; it defaults to the best of the points given).

The first term is not weighted, as in the definition. With no degradation AUP is the area under the curve plus the
rectangle rho_1 * y_1. Our reports measure rho as the decoder's tokens per forward (`tokens_per_forward`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def aup_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    """W(y) = min(exp(-alpha * (1 - y / y_max)), 1): 1 at the best accuracy, decaying exponentially below it."""
    if y_max <= 0:  # every method scores 0: nothing to penalize
        return 1.0
    return min(math.exp(-alpha * (1 - y / y_max)), 1.0)


def aup(
    parallelism: Sequence[float],
    accuracy: Sequence[float],
    y_max: float | None = None,
    alpha: float = 3.0,
    y_min_offset: float = 5.0,
) -> float:
    """d3LLM's Accuracy Under Parallelism of (tokens per forward, accuracy in percent) pairs. See the module doc."""
    if len(parallelism) != len(accuracy) or not parallelism:
        raise ValueError("`parallelism` and `accuracy` must be non-empty and of the same length.")
    if any(r <= 0 for r in parallelism):
        raise ValueError(f"Parallelism (tokens per forward) must be positive, got {list(parallelism)}.")
    if any(not 0 <= y <= 100 for y in accuracy):
        raise ValueError(f"Accuracy must be in percent [0, 100], got {list(accuracy)}. Multiply fractions by 100.")
    points = sorted(zip(parallelism, accuracy))
    y_max = max(y for _, y in points) if y_max is None else y_max
    y_min = points[0][1] - y_min_offset
    points = [(r, y) for r, y in points if y >= y_min]
    total = points[0][0] * points[0][1]
    for (r0, y0), (r1, y1) in zip(points, points[1:]):
        total += 0.5 * (r1 - r0) * (y1 * aup_weight(y1, y_max, alpha) + y0 * aup_weight(y0, y_max, alpha))
    return total


def aup_of_report(report: Mapping, y_max: float | None = None, alpha: float = 3.0) -> float | None:
    """AUP of an `evaluate_few_step` report (accuracy in percent vs measured tokens per forward); None if undefined."""
    results = [r for r in report["results"] if r.get("tokens_per_forward", 0) > 0]
    if not results:
        return None
    return aup(
        [r["tokens_per_forward"] for r in results], [100 * r["accuracy"] for r in results], y_max=y_max, alpha=alpha
    )


def _as_report_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def plot_frontier(
    reports: Mapping[str, Mapping | Sequence[Mapping]],
    path: str,
    *,
    x: str = "tokens_per_step",
    title: str | None = None,
) -> str:
    """Accuracy vs tokens per step (or `x="tokens_per_forward"`), one line per model, one panel per task; PNG.

    `reports` maps a model name to an `evaluate_few_step` report or a list of them (one per task). Matplotlib's Agg
    backend is used, so no display is needed. Returns `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not reports:
        raise ValueError("`reports` is empty: give {model name: evaluate_few_step report}.")
    tasks: list[str] = []
    for value in reports.values():
        for report in _as_report_list(value):
            if report["task"] not in tasks:
                tasks.append(report["task"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, value in reports.items():
            for report in _as_report_list(value):
                if report["task"] != task:
                    continue
                results = sorted(report["results"], key=lambda r: r[x])
                xs = [r[x] for r in results]
                ys = [100 * r["accuracy"] for r in results]
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 1 2 4 8, not 2^k
        ax.set_xlabel("tokens per step" if x == "tokens_per_step" else x.replace("_", " "))
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(reports: Mapping[str, Mapping | Sequence[Mapping]], *, with_aup: bool = True) -> str:
    """Markdown table: one row per (model, task), accuracy (%) and NFE per tokens-per-step budget, and AUP.

    AUP uses, per task, the best accuracy of all the models in the table as y_max, so rows compare fairly.
    """
    rows = [(name, report) for name, value in reports.items() for report in _as_report_list(value)]
    if not rows:
        raise ValueError("`reports` is empty.")
    budgets = sorted({r["tokens_per_step"] for _, report in rows for r in report["results"]})
    best = {}
    for _, report in rows:
        top = max(100 * r["accuracy"] for r in report["results"])
        best[report["task"]] = max(best.get(report["task"], 0.0), top)
    header = ["model", "task", *[f"acc @ {k} tok/step (NFE)" for k in budgets]] + (["AUP"] if with_aup else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, report in rows:
        by_k = {r["tokens_per_step"]: r for r in report["results"]}
        cells = [name, report["task"]]
        for k in budgets:
            r = by_k.get(k)
            cells.append("-" if r is None else f"{100 * r['accuracy']:.1f} ({r['nfe']:.1f})")
        if with_aup:
            value = aup_of_report(report, y_max=best[report["task"]])
            cells.append("-" if value is None else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_markdown_table(rows: Sequence[Mapping]) -> str:
    """Markdown table of aggregated rows `{task, method, tokens_per_step, accuracy_mean, accuracy_std, seeds}`:
    one line per (task, method), mean ± std accuracy (%) per budget."""
    if not rows:
        raise ValueError("`rows` is empty.")
    budgets = sorted({r["tokens_per_step"] for r in rows})
    keys = []
    for r in rows:
        if (r["task"], r["method"]) not in keys:
            keys.append((r["task"], r["method"]))
    header = ["task", "method", *[f"{k} tok/step" for k in budgets]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, method in keys:
        cells = [task, method]
        for k in budgets:
            match = [r for r in rows if r["task"] == task and r["method"] == method and r["tokens_per_step"] == k]
            if not match:
                cells.append("-")
            else:
                r = match[0]
                cells.append(f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(reports: Sequence[Mapping], output_dir: str, *, name: str = "eval_report") -> dict[str, str]:
    """One report for several tasks of one model (e.g. built-in and lm-eval tasks): `{name}.json` (the reports and
    their table), `{name}.md` (the table) and `{name}.png` (accuracy vs tokens per step, one panel per task).

    Returns the three paths. Every report is an `evaluate_few_step`-style dict of the same `model_name`.
    """
    import json
    import os

    if not reports:
        raise ValueError("`reports` is empty: nothing to write.")
    model_name = reports[0]["model_name"]
    table = markdown_table({model_name: list(reports)})
    os.makedirs(output_dir, exist_ok=True)
    paths = {ext: os.path.join(output_dir, f"{name}.{ext}") for ext in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump({"model_name": model_name, "reports": list(reports), "table": table}, f, indent=2)
    with open(paths["md"], "w") as f:
        f.write(table + "\n")
    plot_frontier({model_name: list(reports)}, paths["png"])
    return paths
