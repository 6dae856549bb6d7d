"""Decoding speed, side by side in one run; writes benchmarks/results/decode.json (decode_cuda.json on a GPU).

Runs unchanged on a CUDA device (`--device auto`, the default: models in bf16 with SDPA attention there) or on the
CPU (fp32). `benchmarks/device_check.py` calls `bidirectional_cache_benchmark` and `block_cache_benchmark` on 1B models.

1. Block-causal (native SDAR, hidden 256, 4 layers, random weights), prompt 64, 256 new tokens, 1 token per step:
   the plain full-sequence loop (`use_cache=False`) vs exact block KV-cache decoding. Outputs must be identical.
2. Threshold (parallel) decoding: tokens per forward. A random-weights model is never confident, so this part uses a
   small bidirectional model briefly trained here, in the benchmark, on repeating patterns (it becomes confident),
   and compares 1 token per step with `threshold=0.9`.
3. Bidirectional KV cache (`--only bidirectional_cache`): Fast-dLLM's approximate prefix / dual cache vs exact
   decoding on a native LLaDA of 50M parameters (random weights, output head sharpened so that some predictions pass
   the threshold), prompt 512, 256 new tokens, block 32, at 1 and 4 tokens per step and threshold 0.9, batch 1 and 8.
   A full exact decode of that size takes over an hour on one CPU thread, so each run is timed for a budget of
   seconds: exact decoding costs the same at every forward (the whole sequence), so it may stop after any forward;
   cached runs stop only after whole blocks (a cached block starts with one full forward), counted from the first
   block, whose prefix window (block + tail) is the longest: prefix figures are a lower bound. With a threshold, how
   many tokens a forward commits varies (the exact run's first forwards commit the most), so compare seconds per
   forward (`seconds / forwards`) there, beside `tokens_per_forward`.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decode.py [--quick] [--only bidirectional_cache [--settings ...]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time

import torch

from trl_t3d import AutoModelForDiffusionLM, diffusion_generate, get_adapter, testing

RESULTS = os.path.join(os.path.dirname(__file__), "results", "decode.json")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats=1):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return out, best


def run_decoding(model, input_ids, attention_mask=None, repeats=1, **kwargs):
    kwargs = {"return_dict_in_generate": True, "output_step_map": True, "stop_at_eos": False, **kwargs}
    out, seconds = timed(lambda: diffusion_generate(model, input_ids, attention_mask, **kwargs), repeats)
    new_tokens = int((out.step_map >= 0).sum())
    return out, {
        "nfe": out.nfe,
        "tokens_per_forward": round(out.tokens_per_forward, 3),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds, 1),
    }


def cache_benchmark(tokenizer, new_tokens, block_length, prompt_length, hidden, layers):
    with tempfile.TemporaryDirectory() as directory:
        testing.save_sdar(directory, hidden_size=hidden, num_layers=layers, num_heads=4)
        model = AutoModelForDiffusionLM.from_pretrained(directory, processing_class=tokenizer)
    model = model.to(DEVICE, DTYPE)
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(10, len(tokenizer), (1, prompt_length), generator=generator).to(DEVICE)
    settings = dict(max_new_tokens=new_tokens, block_length=block_length)
    plain, plain_stats = run_decoding(model, input_ids, use_cache=False, **settings)
    cached, cached_stats = run_decoding(model, input_ids, use_cache=True, **settings)
    cached_thr, cached_thr_stats = run_decoding(model, input_ids, use_cache=True, threshold=0.9, **settings)
    identical = torch.equal(plain.sequences, cached.sequences) and torch.equal(plain.step_map, cached.step_map)
    return {
        "model": f"native SDAR, hidden {hidden}, {layers} layers, {params / 1e6:.2f}M params, random weights",
        "prompt_length": prompt_length,
        "max_new_tokens": new_tokens,
        "block_length": block_length,
        "tokens_per_step": 1,
        "plain_full_sequence_loop": plain_stats,
        "cached_block_decoding": cached_stats,
        "cached_block_decoding_threshold_0.9": cached_thr_stats,
        "identical_output": identical,
        "speedup": round(plain_stats["seconds"] / cached_stats["seconds"], 2),
    }


def pattern_batch(batch, length, generator):
    rows = []
    for _ in range(batch):
        period = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator))).randint(2, 5)
        unit = torch.randint(10, 46, (period,), generator=generator)
        rows.append(unit.repeat(length // period + 1)[:length])
    return torch.stack(rows)


def train_confident_model(tokenizer, steps, prompt_length, completion_length):
    """A generic bidirectional model trained with the masked-diffusion loss to continue repeating patterns."""
    torch.manual_seed(0)
    model = testing.make_generic_mlm(tokenizer, hidden_size=64, num_layers=2, num_heads=4).to(DEVICE).train()
    adapter = get_adapter(model, tokenizer=tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    loss_value = None
    for _ in range(steps):
        clean = pattern_batch(32, prompt_length + completion_length, generator).to(DEVICE)
        prompt, target = clean[:, :prompt_length], clean[:, prompt_length:]
        ratio = torch.rand(32, 1, generator=generator).clamp(min=0.05)  # on the CPU generator, as before
        noise = (torch.rand(target.shape, generator=generator) < ratio).to(DEVICE)
        noisy = adapter.noise_tokens(target, noise)
        logits = adapter.completion_logits(model, prompt, None, noisy)
        loss = torch.nn.functional.cross_entropy(logits[noise], target[noise])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss)
    return model.eval(), loss_value


def threshold_benchmark(tokenizer, train_steps, new_tokens, block_length, prompt_length=24):
    start = time.perf_counter()
    model, final_loss = train_confident_model(tokenizer, train_steps, prompt_length, new_tokens)
    train_seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(1)
    clean = pattern_batch(8, prompt_length + new_tokens, generator).to(DEVICE)
    prompt, target = clean[:, :prompt_length], clean[:, prompt_length:]
    settings = dict(max_new_tokens=new_tokens, block_length=block_length)
    results = {}
    for name, extra in {
        "one_token_per_step": {},
        "threshold_0.9": {"threshold": 0.9},
        "threshold_0.7": {"threshold": 0.7},
    }.items():
        out, stats = run_decoding(model, prompt, **settings, **extra)
        stats["pattern_accuracy"] = round(float((out.sequences[:, prompt_length:] == target).float().mean()), 3)
        results[name] = stats
    return {
        "model": "generic bidirectional Llama, hidden 64, 2 layers, trained in this benchmark on repeating patterns "
        f"(period 2-5) for {train_steps} AdamW steps ({train_seconds:.0f}s, final masked-token loss {final_loss:.3f}); "
        "random weights are never confident enough for threshold decoding",
        "batch": 8,
        "prompt_length": prompt_length,
        "max_new_tokens": new_tokens,
        "block_length": block_length,
        **results,
    }


class _BudgetSpent(Exception):
    pass


def budgeted_decoding(model, input_ids, attention_mask, budget_s, whole_blocks, **kwargs):
    """Decode until `budget_s` seconds have passed (checked before each forward; with `whole_blocks`, only before a
    block's first forward), and return what was timed: forwards, committed tokens, seconds, tokens/s."""
    block = kwargs["block_length"]
    _sync()
    start, timed_run = time.perf_counter(), {}

    def check(step, canvas, undecided):
        elapsed = time.perf_counter() - start  # `undecided` is a copy: the device work before it has finished
        current = int(undecided.any(0).nonzero()[0]) // block  # the first block with undecided positions
        at_block_start = bool(undecided[:, current * block : (current + 1) * block].all())
        if step > 0 and elapsed >= budget_s and (at_block_start or not whole_blocks):
            timed_run.update(forwards=step, tokens=int((~undecided).sum()), seconds=elapsed)
            raise _BudgetSpent

    try:
        out = diffusion_generate(
            model,
            input_ids,
            attention_mask,
            return_dict_in_generate=True,
            stop_at_eos=False,
            step_callback=check,
            **kwargs,
        )
        _sync()
        timed_run.update(forwards=out.nfe, tokens=int(input_ids.shape[0] * kwargs["max_new_tokens"]))
        timed_run["seconds"] = time.perf_counter() - start
    except _BudgetSpent:
        pass
    batch = input_ids.shape[0]
    return {
        "forwards": timed_run["forwards"],
        "tokens": timed_run["tokens"],
        "seconds": round(timed_run["seconds"], 3),
        "tokens_per_second": round(timed_run["tokens"] / timed_run["seconds"], 2),
        "tokens_per_forward": round(timed_run["tokens"] / (batch * timed_run["forwards"]), 2),
        "blocks_timed": round(timed_run["tokens"] / (batch * block), 2),
    }


def native_llada(quick: bool):
    """A native `LLaDAModelLM` with LLaDA-8B's architecture options at 50M parameters (random weights)."""
    from trl_t3d.models.llada import LLaDAConfig, LLaDAModelLM

    sizes = (
        dict(d_model=128, n_heads=4, n_layers=2, mlp_hidden_size=256)
        if quick
        else dict(d_model=640, n_heads=10, n_layers=8, mlp_hidden_size=1728)
    )
    config = LLaDAConfig(
        **sizes,
        n_kv_heads=sizes["n_heads"],
        vocab_size=8192,
        embedding_size=8192,
        max_sequence_length=1024,
        rope=True,
        rope_theta=500000.0,
        block_type="llama",
        activation_type="silu",
        layer_norm_type="rms",
        rms_norm_eps=1e-5,
        include_bias=False,
        weight_tying=False,
        mask_token_id=8191,
        eos_token_id=8190,
        pad_token_id=8190,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        init_device="cpu",
        init_fn="mitchell",
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LLaDAModelLM(config).eval()
    sharpen_output_head(model)
    return model.to(DEVICE, DTYPE)


def sharpen_output_head(model, factor: float = 8.0):
    """Random weights predict near-uniformly; x8 on the output head makes some (not most) predictions pass 0.9."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)


def _warm_up(model, input_ids, **kwargs):
    """One forward of each kind first (CUDA kernels, cuBLAS handles, allocator), untimed."""
    try:
        budgeted_decoding(model, input_ids, None, 0.0, whole_blocks=False, **kwargs)
    except Exception:  # noqa: BLE001 - the timed run reports the error
        pass


def bidirectional_cache_benchmark(
    quick: bool,
    budget_s: float,
    only_settings=None,
    *,
    model=None,
    prompt_length: int | None = None,
    new_tokens: int | None = None,
    block: int | None = None,
    batches=(1, 8),
    deadline: float | None = None,
    progress=print,
):
    """Fast-dLLM's approximate prefix / dual cache against exact decoding (`cache="none"`) on a native LLaDA, each run
    timed for `budget_s` seconds; `deadline` (a `time.perf_counter()` value) skips the runs left once passed."""
    model = model if model is not None else native_llada(quick)
    params = sum(p.numel() for p in model.parameters())
    defaults = (64, 64, 16) if quick else (512, 256, 32)
    prompt_length = prompt_length or defaults[0]
    new_tokens = new_tokens or defaults[1]
    block = block or defaults[2]
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    settings = {
        "1_token_per_step": dict(tokens_per_step=1),
        "4_tokens_per_step": dict(tokens_per_step=4),
        "threshold_0.9": dict(threshold=0.9, threshold_rule="fast_dllm"),
    }
    settings = {k: v for k, v in settings.items() if not only_settings or k in only_settings}
    runs, skipped = {}, []
    for batch in batches:
        input_ids = torch.randint(10, min(vocab, 8000), (batch, prompt_length), generator=generator).to(DEVICE)
        for name, extra in settings.items():
            row = {}
            for mode in ("none", "prefix", "dual"):
                if deadline is not None and time.perf_counter() > deadline:
                    skipped.append(f"batch_{batch}/{name}/{mode}")
                    continue
                kwargs = dict(max_new_tokens=new_tokens, block_length=block, cache=mode, **extra)
                _warm_up(model, input_ids, **kwargs)
                row[mode] = budgeted_decoding(model, input_ids, None, budget_s, whole_blocks=mode != "none", **kwargs)
                progress(f"  batch {batch} {name} {mode}: {row[mode]}")
            for mode in ("prefix", "dual"):
                if mode in row and "none" in row:
                    row[f"{mode}_vs_none"] = round(
                        row[mode]["tokens_per_second"] / row["none"]["tokens_per_second"], 2
                    )
            if row:
                runs[f"batch_{batch}/{name}"] = row
    description = (
        f"native LLaDA (LLaDAModelLM), {model.config.n_layers} layers, d_model {model.config.d_model}, "
        f"vocab {vocab}, {params / 1e6:.1f}M params, random weights, output head x8, {DTYPE}, "
        f"attention {getattr(model.config, '_attn_implementation', None)}, {DEVICE}"
    )
    budget = f"{budget_s} per run (at least one forward; cached runs time whole blocks from the first)"
    return _result(description, prompt_length, new_tokens, block, budget, runs, skipped)


def block_cache_benchmark(
    model,
    budget_s: float,
    *,
    prompt_length: int,
    new_tokens: int,
    block: int,
    batches=(1, 8),
    settings=None,
    deadline: float | None = None,
    progress=print,
):
    """A block-causal family's exact block KV cache (`use_cache=True`, same tokens) against full-sequence forwards
    (`use_cache=False`), each run timed for `budget_s` seconds, at batch sizes `batches`."""
    params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    settings = settings or {"1_token_per_step": dict(tokens_per_step=1)}
    generator = torch.Generator().manual_seed(0)
    runs, skipped = {}, []
    for batch in batches:
        input_ids = torch.randint(10, min(vocab, 8000), (batch, prompt_length), generator=generator).to(DEVICE)
        for name, extra in settings.items():
            row = {}
            for mode, use_cache in (("no_cache", False), ("exact_block_cache", True)):
                if deadline is not None and time.perf_counter() > deadline:
                    skipped.append(f"batch_{batch}/{name}/{mode}")
                    continue
                kwargs = dict(max_new_tokens=new_tokens, block_length=block, use_cache=use_cache, **extra)
                _warm_up(model, input_ids, **kwargs)
                row[mode] = budgeted_decoding(model, input_ids, None, budget_s, whole_blocks=use_cache, **kwargs)
                progress(f"  batch {batch} {name} {mode}: {row[mode]}")
            if len(row) == 2:
                row["cache_vs_no_cache"] = round(
                    row["exact_block_cache"]["tokens_per_second"] / row["no_cache"]["tokens_per_second"], 2
                )
            if row:
                runs[f"batch_{batch}/{name}"] = row
    description = (
        f"{type(model).__name__}, {params / 1e6:.1f}M params, vocab {vocab}, random weights, {DTYPE}, "
        f"attention {getattr(model.config, '_attn_implementation', None)}, {DEVICE}"
    )
    budget = f"{budget_s} per run (cached runs time whole blocks)"
    return _result(description, prompt_length, new_tokens, block, budget, runs, skipped)


def _result(description, prompt_length, new_tokens, block, budget, runs, skipped) -> dict:
    """A cache benchmark's result: the model, the geometry, the time budget, the runs, what the deadline skipped."""
    result = {
        "model": description,
        "prompt_length": prompt_length,
        "max_new_tokens": new_tokens,
        "block_length": block,
        "budget_s": budget,
        "runs": runs,
    }
    if skipped:
        result["skipped_past_deadline"] = skipped
    return result


def machine() -> str:
    if DEVICE.type == "cuda":
        return f"{torch.cuda.get_device_name(DEVICE)} (CUDA {torch.version.cuda}), {DTYPE}"
    return f"{platform.processor() or platform.machine()}, CPU, torch threads {torch.get_num_threads()}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    parser.add_argument("--only", choices=["bidirectional_cache"], help="run one part; merged into the results file")
    parser.add_argument("--budget_s", type=float, default=15.0, help="timing budget per bidirectional-cache run")
    parser.add_argument("--settings", nargs="+", help="bidirectional-cache settings to (re)run, merged into the file")
    args = parser.parse_args()
    global DEVICE, DTYPE
    if args.device != "auto":
        DEVICE = torch.device(args.device)
        DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    global RESULTS
    if DEVICE.type == "cuda":  # the CPU figures stay where they are
        RESULTS = RESULTS.replace("decode.json", "decode_cuda.json")
    tokenizer = testing.make_tokenizer()
    quick = args.quick
    if args.only == "bidirectional_cache":
        part = bidirectional_cache_benchmark(quick, args.budget_s, args.settings)
        print(json.dumps(part, indent=2))
        if not quick:
            report = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
            if args.settings and "bidirectional_cache" in report:  # keep the other settings' runs
                part["runs"] = {**report["bidirectional_cache"]["runs"], **part["runs"]}
            report["bidirectional_cache"] = part
            report["bidirectional_cache_machine"] = machine()
            with open(RESULTS, "w") as f:
                json.dump(report, f, indent=2)
        return
    report = {
        "machine": machine(),
        "torch": torch.__version__,
        "block_cache": [
            cache_benchmark(
                tokenizer, 64 if quick else 256, 4, 16 if quick else 64, 64 if quick else 256, 2 if quick else 4
            ),
        ],
        "threshold": threshold_benchmark(tokenizer, 30 if quick else 800, 64, 32),
        "bidirectional_cache": bidirectional_cache_benchmark(quick, args.budget_s),
    }
    if not quick:
        report["block_cache"].append(cache_benchmark(tokenizer, 256, 32, 64, 256, 4))
    print(json.dumps(report, indent=2))
    if not quick:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
