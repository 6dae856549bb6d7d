"""The first-GPU check (issue #23, item 6): decode speed and training-step cost of native LLaDA and SDAR at about 1B
parameters with random weights, nothing downloaded. Run through `benchmarks/device_check.sh` (which finds a Python
with torch, transformers, trl and peft, and bounds the wall time), or directly:

    python benchmarks/device_check.py            # on one H100/H200: about 6 minutes, bf16, SDPA attention
    python benchmarks/device_check.py --tiny     # the same sections on tiny configs, on the CPU in a minute or two

Sections (each under its own time budget; the JSON is rewritten after every section, so a failure or a timeout in
one keeps the others' results; a section's error is recorded with its traceback and the next one runs):

1. `train_llada_full`, `train_sdar_full`: one optimizer step of each objective (ntd, t3d, t3d_mf = the default, tad,
   sft, and t3d_mf with one query of k positions per block, k = 1/4/8) on the same model and the same states,
   interleaved rounds, median step time, ratio to the t3d step; state forwards per micro-step (forward hooks on
   policy and reference) and peak memory (torch.cuda.max_memory_allocated; on the CPU the profiler's allocator
   events) per objective. LLaDA trains blocks of 32, SDAR blocks of 4, over a 256-token canvas (users' geometry).
2. `decode_llada`: tokens/s without cache and with Fast-dLLM's prefix / dual cache, batch 1 and 8, 1 token per step
   and threshold 0.9; `decode_sdar`: SDAR's exact block cache against full-sequence forwards, batch 1 and 8.
3. `train_llada_lora`, `train_sdar_lora`: section 1 with LoRA (r 16 on the family's target modules).
4. `train_issue_geometry`: section 1 at the geometry of the issue's CPU ratios (64-token canvas), time allowing.

Writes `$OUT/device_check.json` and `$OUT/device_check.md` (`OUT` from the environment, default
benchmarks/results/device/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


def environment() -> dict:
    import peft
    import transformers
    import trl

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu_name=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    try:
        import subprocess

        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=os.path.dirname(__file__)
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - a copied tree may have no .git
        env["git_commit"] = None
    return env


def plan(tiny: bool) -> dict:
    """Sizes, geometries and time budgets (seconds) of the sections."""
    if tiny:
        train = dict(batch=2, prompt_length=8, completion_length=64, steps=3)
        return dict(
            size="tiny",
            train=train,
            train_issue=dict(batch=2, prompt_length=8, completion_length=64, steps=2),
            decode_llada=dict(prompt_length=16, new_tokens=64, block=32, budget_s=0.5),
            decode_sdar=dict(prompt_length=16, new_tokens=32, block=4, budget_s=0.5),
            budgets=dict(train_full=20, train_lora=15, decode_llada=20, decode_sdar=10, train_issue_geometry=20),
        )
    return dict(
        size="1b",
        train=dict(batch=8, prompt_length=128, completion_length=256, steps=6),
        train_issue=dict(batch=8, prompt_length=32, completion_length=64, steps=6),
        decode_llada=dict(prompt_length=128, new_tokens=256, block=32, budget_s=4.0),
        decode_sdar=dict(prompt_length=128, new_tokens=256, block=4, budget_s=4.0),
        budgets=dict(train_full=55, train_lora=40, decode_llada=75, decode_sdar=30, train_issue_geometry=40),
    )


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_section(family, lora, geometry, size, budget_s, tok):
    import train_step

    block = 32 if family == "llada" else 4
    return train_step.objective_cost(
        family,
        size,
        tok,
        train_step.resolve_device(),
        block_length=block,
        lora=lora,
        budget_s=budget_s,
        progress=log,
        **geometry,
    )


def _decode_run(cfg, budget_s) -> dict:
    """The decode benchmarks' shared keywords: the section's geometry, a deadline `budget_s` from now, the log."""
    geometry = {key: cfg[key] for key in ("prompt_length", "new_tokens", "block")}
    return dict(geometry, deadline=time.perf_counter() + budget_s, progress=log)


def decode_llada_section(cfg, size, budget_s, tok):
    import decode
    import train_step

    model = train_step.native_model("llada", size, tok, decode.DEVICE, decode.DTYPE)
    decode.sharpen_output_head(model)
    try:
        return decode.bidirectional_cache_benchmark(
            False,
            cfg["budget_s"],
            ["1_token_per_step", "threshold_0.9"],
            model=model,
            **_decode_run(cfg, budget_s),
        )
    finally:
        del model


def decode_sdar_section(cfg, size, budget_s, tok):
    import decode
    import train_step

    model = train_step.native_model("sdar", size, tok, decode.DEVICE, decode.DTYPE)
    try:
        return decode.block_cache_benchmark(
            model,
            cfg["budget_s"],
            **_decode_run(cfg, budget_s),
        )
    finally:
        del model


# ---------------------------------------------------------------------------------------------- report
def _train_table(part: dict) -> list[str]:
    lines = [
        f"{part['family']} — {part['mode']}; {part['model']['params_millions']}M params, {part['model']['dtype']}, "
        f"attention {part['model']['attn_implementation']}; geometry {part['geometry']}; "
        f"{part['rounds']} interleaved rounds, {part['masked_tokens']} masked tokens",
        "",
        "| objective | step (ms, median) | vs t3d | state forwards / micro-step | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for name, r in part["objectives"].items():
        forwards = ", ".join(f"{k} {v}" for k, v in r["forwards_per_micro_step"].items())
        lines.append(
            f"| {name} | {r['step_seconds_median'] * 1000:.1f} | {r['step_time_vs_t3d']:.2f} | "
            f"{r['forwards_total']} ({forwards}) | {r['peak_mib']:.0f} |"
        )
    lines += ["", f"Memory: {part['memory_method']}.", ""]
    return lines


def _decode_table(part: dict) -> list[str]:
    lines = [
        f"{part['model']}; prompt {part['prompt_length']}, {part['max_new_tokens']} new tokens, block "
        f"{part['block_length']}; {part['budget_s']}",
        "",
        "| run | cache | tokens/s | tokens/forward | forwards timed | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for run, row in part["runs"].items():
        for mode, r in row.items():
            if isinstance(r, dict):
                lines.append(
                    f"| {run} | {mode} | {r['tokens_per_second']:.1f} | {r['tokens_per_forward']} | {r['forwards']} | "
                    f"{r['seconds']} |"
                )
    if part.get("skipped_past_deadline"):
        lines.append(f"\nSkipped past the section's deadline: {', '.join(part['skipped_past_deadline'])}")
    return lines + [""]


def markdown(report: dict) -> str:
    env = report["environment"]
    card = env.get("gpu_name") or f"CPU ({env['cpu']}, {env['torch_threads']} threads)"
    lines = [
        f"# Device check ({'tiny, CPU smoke run' if report['tiny'] else 'about 1B parameters, random weights'})",
        "",
        f"Card: **{card}**; torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}, "
        f"peft {env['peft']}; compute {report['dtype']}. Total {report.get('total_seconds', '?')} s.",
        "",
    ]
    for name, part in report["sections"].items():
        lines.append(f"## {name} ({part.get('seconds', '?')} s, {part['status']})")
        lines.append("")
        result = part.get("result")
        if part["status"] != "ok":
            lines += ["```", part.get("error", "").strip()[-1500:], "```", ""]
        elif "objectives" in (result or {}):
            lines += _train_table(result)
        elif result and "runs" in result:
            lines += _decode_table(result)
        elif isinstance(result, dict):
            for subpart in result.values():
                if isinstance(subpart, dict) and "objectives" in subpart:
                    lines += _train_table(subpart)
    return "\n".join(lines) + "\n"


def write(report: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "device_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "device_check.md"), "w") as f:
        f.write(markdown(report))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs, CPU-sized: a smoke run of every section")
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join("benchmarks", "results", "device"))
    parser.add_argument(
        "--total_s", type=float, default=None, help="wall-time budget of all sections (default 400 s, tiny 300 s)"
    )
    parser.add_argument("--sections", nargs="+", help="run only these sections (names as in the JSON)")
    opts = parser.parse_args()
    total_s = opts.total_s or (300.0 if opts.tiny else 400.0)
    if not opts.tiny and not torch.cuda.is_available():
        log("WARNING: no CUDA device: running the 1B sizes on the CPU will not finish in time; use --tiny")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = plan(opts.tiny)
    from trl_t3d import testing

    tok = testing.make_tokenizer()
    env = environment()
    log(f"device: {env.get('gpu_name', 'CPU')}; torch {env['torch']}; out: {opts.out}")
    report = {
        "issue": "#23 item 6",
        "tiny": opts.tiny,
        "gpu_name": env.get("gpu_name"),
        "dtype": "bfloat16 (weights loaded in bf16; full fine-tuning: fp32 master weights + bf16 autocast)"
        if torch.cuda.is_available()
        else "float32",
        "environment": env,
        "plan": cfg,
        "sections": {},
    }
    write(report, opts.out)
    b = cfg["budgets"]
    sections = [
        (
            "train_llada_full",
            b["train_full"],
            lambda s: train_section("llada", False, cfg["train"], cfg["size"], s, tok),
        ),
        (
            "train_sdar_full",
            b["train_full"],
            lambda s: train_section("sdar", False, cfg["train"], cfg["size"], s, tok),
        ),
        ("decode_llada", b["decode_llada"], lambda s: decode_llada_section(cfg["decode_llada"], cfg["size"], s, tok)),
        ("decode_sdar", b["decode_sdar"], lambda s: decode_sdar_section(cfg["decode_sdar"], cfg["size"], s, tok)),
        (
            "train_llada_lora",
            b["train_lora"],
            lambda s: train_section("llada", True, cfg["train"], cfg["size"], s, tok),
        ),
        ("train_sdar_lora", b["train_lora"], lambda s: train_section("sdar", True, cfg["train"], cfg["size"], s, tok)),
        (
            "train_issue_geometry",
            b["train_issue_geometry"],
            lambda s: {
                family: train_section(family, False, cfg["train_issue"], cfg["size"], s / 2, tok)
                for family in ("llada", "sdar")
            },
        ),
    ]
    for name, budget, run in sections:
        if opts.sections and name not in opts.sections:
            continue
        left = total_s - (time.perf_counter() - T0)
        # a section's budget bounds its timed loops; setup and the last round come on top (about a third more)
        if left < 0.5 * budget:
            log(f"SKIP {name}: {left:.0f} s left of the {total_s:.0f} s budget")
            report["sections"][name] = {"status": "skipped (time budget)", "seconds": 0}
            write(report, opts.out)
            continue
        budget = min(budget, 0.75 * left)
        log(f"START {name} (budget {budget:.0f} s)")
        start = time.perf_counter()
        try:
            result = run(budget)
            entry = {"status": "ok", "result": result}
        except Exception as error:  # noqa: BLE001 - one section's failure must not lose the others
            entry = {"status": f"error: {type(error).__name__}", "error": traceback.format_exc()}
            log(f"ERROR in {name}: {type(error).__name__}: {error}")
        entry["seconds"] = round(time.perf_counter() - start, 1)
        if torch.cuda.is_available():
            entry["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        report["sections"][name] = entry
        report["total_seconds"] = round(time.perf_counter() - T0, 1)
        free_memory()
        write(report, opts.out)
        log(f"DONE {name} in {entry['seconds']} s: {entry['status']}")
        if entry["status"] == "ok" and name.startswith("train_") and "objectives" in entry["result"]:
            ratios = {k: v["step_time_vs_t3d"] for k, v in entry["result"]["objectives"].items()}
            log(f"  step time vs t3d: {ratios}")
    report["total_seconds"] = round(time.perf_counter() - T0, 1)
    write(report, opts.out)
    log(f"wrote {os.path.join(opts.out, 'device_check.json')} and device_check.md")
    print(markdown(report))


if __name__ == "__main__":
    main()
