"""One DDO optimizer step: ours (1 reference + 1 policy forward) vs a faithful four-forward T3D-style step.

Writes benchmarks/results/train_step.json. Usage:

    OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/train_step.py [--steps 5]
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --states_only   # only the trailing-EOS measurement below

Both sides run the same tiny bidirectional Llama (fp32), the same batch of states x_t and the same loss definition
(DDO with mean masked log-probs + level-averaged path loss restricted to the masked set). The baseline follows the
T3D reference code's structure (`train/self_ddo_sdar_full.py`, read, not copied): the reference runs twice (real
log-probs, then fake tokens + fake log-probs), the policy runs twice with grad (real, then fake), each time with a
full-vocabulary fp32 log-softmax over every position, and the path loss loops over examples/levels/blocks in Python
with `.item()`. Our step is `DDOTrainer.compute_loss`.

Memory method (CPU): `torch.profiler` with `profile_memory=True` records every allocation and free of the CPU
allocator during the step (`[memory]` events of the trace, in order); the running sum of their byte counts gives
the live tensor bytes over time, and its maximum is
the step's *dynamic* peak (activations, logits, log-softmax buffers, gradients). The *static* bytes live before the
step (policy, reference, grads, AdamW state: all tensors counted once) are added for the total peak. Both are
reported; the optimizer state is materialized by a warm-up step first, so the measured step is a steady-state one.

Trailing EOS (`trailing_eos` in the JSON): bidirectional families train on the whole decoded canvas, which past the
answer is EOS padding. The collator's states are measured with `max_trailing_eos_tokens=None` (before: any block may
be drawn) and with the default 2 (T3D's `post_num`): loss tokens per forward token (forward = the real prompt
tokens + the canvas), the same counting only tokens that are not padding past the cap ("informative"), and the share
of forwards whose trained block holds nothing else. Two shapes: this benchmark's (canvas 64, block 8) and the shipped
LLaDA recipe's (canvas 1024, block 4, prompts of 160 tokens); the answer lengths (uniform, stated in the JSON) are
assumptions, not measured LLaDA outputs.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from trl_t3d import DDOConfig, DDOTrainer, testing  # noqa: E402
from trl_t3d.losses import ddo_loss  # noqa: E402

DEVICE = torch.device("cpu")
RESULTS = os.path.join(os.path.dirname(__file__), "results", "train_step.json")


def make_model(tok, vocab, hidden, layers, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        is_causal=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        mask_token_id=tok.mask_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def trajectories(tok, n, prompt_length, completion_length, block_length, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        steps = []
        for start in range(0, completion_length, block_length):
            steps += [start + int(p) for p in torch.randperm(block_length, generator=g)]
        rows.append(
            {
                "prompt_ids": torch.randint(10, len(tok), (prompt_length,), generator=g).tolist(),
                "completion_ids": torch.randint(10, len(tok), (completion_length,), generator=g).tolist(),
                "step_map": steps,
                "block_length": block_length,
            }
        )
    return Dataset.from_list(rows)


# ---------------------------------------------------------------------------------------------- four-forward baseline
def _full_logp(logits, tokens, mask):
    log_probs = F.log_softmax(logits.float(), dim=-1)  # full vocabulary, every position (as the reference code)
    tok = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(1) / mask.sum(1)


def _path_loss_loops(logits, labels, mask, rank, block_length, k):
    losses = []
    num_blocks = -(-labels.shape[1] // block_length)
    for b in range(labels.shape[0]):
        level_losses = []
        for level in range(-(-block_length // k)):
            selected = torch.zeros_like(mask[b])
            for block in range(num_blocks):
                sl = slice(block * block_length, (block + 1) * block_length)
                valid = int(mask[b, sl].sum().item())
                if valid == 0:
                    continue
                selected[sl] = mask[b, sl] & (rank[b, sl] < (level + 1) * k)
            if selected.sum().item() > 0:
                level_losses.append(F.cross_entropy(logits[b][selected].float(), labels[b][selected]))
        losses.append(torch.stack(level_losses).mean())
    return torch.stack(losses)


def four_forward_loss(trainer, model, ref_model, batch):
    args, adapter = trainer.args, trainer.adapter
    mask = batch["loss_mask"].float()
    y = batch["x0"]

    def logits_of(m):
        return adapter.completion_logits(
            m,
            batch["prompt_ids"],
            batch["prompt_attention_mask"],
            batch["xt"],
            block_length=int(batch["block_length"][0]),
        )

    with torch.no_grad():
        ref_real = _full_logp(logits_of(ref_model), y, mask)  # reference forward 1
        ref_logits = logits_of(ref_model)  # reference forward 2
        fake = torch.where(batch["loss_mask"], ref_logits.argmax(-1), y)
        ref_fake = _full_logp(ref_logits, fake, mask)
    policy_real = _full_logp(logits_of(model), y, mask)  # policy forward 1 (grad)
    policy_logits = logits_of(model)  # policy forward 2 (grad)
    policy_fake = _full_logp(policy_logits, fake, mask)
    loss_ddo, _, _ = ddo_loss(policy_real, policy_fake, ref_real, ref_fake, args.alpha, args.beta)
    path = _path_loss_loops(
        policy_logits, y, batch["loss_mask"], batch["decode_rank"], int(batch["block_length"][0]), args.path_k_steps
    )
    return (loss_ddo + args.lambda_path * path).mean()


# ---------------------------------------------------------------------------------------------- trailing EOS
def padded_trajectories(tok, n, prompt_length, canvas, block_length, answer_range, seed=0):
    """Canvases as bidirectional collection keeps them: an answer, its EOS, then EOS to the end (semi-AR steps)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        answer = int(torch.randint(answer_range[0], answer_range[1] + 1, (1,), generator=g))
        completion = torch.randint(10, len(tok), (answer,), generator=g).tolist()
        completion += [tok.eos_token_id] * (canvas - answer)
        steps = []
        for start in range(0, canvas, block_length):
            steps += [start + int(p) for p in torch.randperm(block_length, generator=g)]
        rows.append(
            {
                "prompt_ids": torch.randint(10, len(tok), (prompt_length,), generator=g).tolist(),
                "completion_ids": completion,
                "step_map": steps,
                "block_length": block_length,
            }
        )
    return rows


def trailing_eos_states(tok, rows, cap=2, seed=0):
    """Loss tokens per forward token of the collator's states, without and with the trailing-EOS cap."""
    from trl_t3d.trainer.collator import DDODataCollator, capped_trailing_eos

    defaults = DDOConfig("/tmp/ddo-bench", use_cpu=True, report_to="none")
    out = {}
    for name, value in (("before_no_cap", None), (f"after_cap_{cap}", cap)):
        collator = DDODataCollator(
            pad_token_id=tok.pad_token_id,
            mask_token_id=tok.mask_token_id,
            mask_ratios=defaults.mask_ratios,
            mask_ratio_exponent=defaults.mask_ratio_exponent,
            eos_token_ids=[tok.eos_token_id],
            max_trailing_eos_tokens=value,
            seed=seed,
        )
        forward = loss = informative = wasted = 0
        for row in rows:
            batch = collator([row])
            padding = capped_trailing_eos(row["completion_ids"], [tok.eos_token_id, tok.pad_token_id], cap)
            trained = batch["loss_mask"][0]
            forward += int(batch["prompt_attention_mask"].sum()) + batch["xt"].shape[1]
            loss += int(trained.sum())
            informative += int((trained & ~padding).sum())
            wasted += int(not (trained & ~padding).any())
        out[name] = {
            "loss_tokens_per_forward_token": loss / forward,
            "informative_loss_tokens_per_forward_token": informative / forward,
            "share_of_forwards_on_pure_trailing_eos": wasted / len(rows),
        }
    before, after = out["before_no_cap"], out[f"after_cap_{cap}"]
    out["informative_gain"] = (
        after["informative_loss_tokens_per_forward_token"] / before["informative_loss_tokens_per_forward_token"]
    )
    return out


def measure_trailing_eos(tok, opts):
    shapes = {
        "benchmark_shape": dict(
            prompt_length=opts.prompt_length,
            canvas=opts.completion_length,
            block_length=opts.block_length,
            answer_range=(opts.completion_length // 4, 3 * opts.completion_length // 4),
        ),
        "llada_recipe_shape": dict(prompt_length=160, canvas=1024, block_length=4, answer_range=(128, 768)),
    }
    result = {"examples_per_shape": opts.state_examples}
    for name, shape in shapes.items():
        rows = padded_trajectories(tok, opts.state_examples, **shape)
        result[name] = {"shape": {k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()}}
        result[name].update(trailing_eos_states(tok, rows))
    return result


# ---------------------------------------------------------------------------------------------- measurement
def static_bytes(*objects) -> int:
    seen, total = set(), 0
    for obj in objects:
        tensors = []
        if isinstance(obj, torch.nn.Module):
            tensors += (
                list(obj.parameters()) + list(obj.buffers()) + [p.grad for p in obj.parameters() if p.grad is not None]
            )
        elif isinstance(obj, torch.optim.Optimizer):
            tensors += [v for state in obj.state.values() for v in state.values() if torch.is_tensor(v)]
        for t in tensors:
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def dynamic_peak(step_fn) -> int:
    """Peak of live CPU-allocator bytes during `step_fn`, from the profiler's per-allocation `[memory]` events."""
    import tempfile

    if torch.cuda.is_available() and DEVICE.type == "cuda":  # on GPU the caching allocator keeps exact stats
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step_fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step_fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    events = [
        e["args"] for e in trace["traceEvents"] if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    ]
    events.sort(key=lambda a: a["Ev Idx"])
    live = peak = 0
    for a in events:
        live += a["Bytes"]
        peak = max(peak, live)
    return peak


def run_method(name, loss_fn, model, ref_model, batch, steps, extra_static=()):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        return loss

    first_loss = float(loss_fn(batch).detach())  # loss at the initial weights, for the equality check
    step()  # warm-up: materializes AdamW state
    times = []
    for _ in range(steps):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    static = static_bytes(model, *([ref_model] if ref_model is not None else []), optimizer, *extra_static)
    dyn = dynamic_peak(step)
    return {
        "method": name,
        "loss_at_init": first_loss,
        "step_seconds_median": statistics.median(times),
        "step_seconds_all": times,
        "static_mib": static / 2**20,
        "dynamic_peak_mib": dyn / 2**20,
        "total_peak_mib": (static + dyn) / 2**20,
    }


def measure_objectives(base, reference, tok, data, batch, settings, steps) -> dict:
    """One optimizer step of each named objective on the same model and states (full fine-tuning, frozen reference),
    as ratios of T3D's step time: what the mean-field term's `mean_field_queries` reference forwards cost."""
    out = {}
    for loss_type in ("ntd", "t3d", "ntd_mf", "t3d_mf"):
        gc.collect()
        args = DDOConfig("/tmp/ddo-bench", loss_type=loss_type, **settings)
        t = DDOTrainer(
            copy.deepcopy(base),
            ref_model=copy.deepcopy(reference),
            args=args,
            train_dataset=data,
            processing_class=tok,
        )
        out[loss_type] = run_method(
            loss_type, lambda b, t=t: t.compute_loss(t.model, b), t.model, t.ref_model, batch, steps
        )
    for result in out.values():
        result["step_time_vs_t3d"] = result["step_seconds_median"] / out["t3d"]["step_seconds_median"]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt_length", type=int, default=32)
    parser.add_argument("--completion_length", type=int, default=64)
    parser.add_argument("--block_length", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (then use --dtype bfloat16 and a bigger model)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--state_examples", type=int, default=512, help="trajectories per shape (trailing EOS)")
    parser.add_argument(
        "--states_only", action="store_true", help="only the trailing-EOS measurement, merged into --output"
    )
    opts = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(opts.device)
    dtype = getattr(torch, opts.dtype)
    torch.manual_seed(0)
    tok = testing.make_tokenizer()
    trailing_eos = measure_trailing_eos(tok, opts)
    summary = {
        shape: {
            k: trailing_eos[shape][k]
            for k in ("before_no_cap", "after_cap_2", "informative_gain")
            if k in trailing_eos[shape]
        }
        for shape in ("benchmark_shape", "llada_recipe_shape")
    }
    if opts.states_only:
        result = json.load(open(opts.output)) if os.path.exists(opts.output) else {}
        result["trailing_eos"] = trailing_eos
        os.makedirs(os.path.dirname(opts.output), exist_ok=True)
        with open(opts.output, "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps(summary, indent=2))
        return
    data = trajectories(tok, opts.batch, opts.prompt_length, opts.completion_length, opts.block_length)
    settings = dict(
        use_cpu=DEVICE.type == "cpu",
        report_to="none",
        gradient_checkpointing=False,
        random_token_ratio=0.1,
        per_device_train_batch_size=opts.batch,
    )
    args = DDOConfig("/tmp/ddo-bench", loss_type="t3d", **settings)  # the loss the four-forward baseline computes

    base = make_model(tok, opts.vocab, opts.hidden, opts.layers).to(DEVICE, dtype)
    reference = copy.deepcopy(base).eval().requires_grad_(False)
    with torch.no_grad():  # policy != reference, so every DDO term is non-trivial
        for p in base.parameters():
            p.add_(0.01 * torch.randn_like(p))
    base.train()

    def fresh():
        return copy.deepcopy(base), copy.deepcopy(reference)

    model, ref = fresh()
    trainer = DDOTrainer(model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    batch = {k: v.to(DEVICE) for k, v in trainer.data_collator([data[i] for i in range(opts.batch)]).items()}

    ours = run_method(
        "ours_1ref_1policy",
        lambda b: trainer.compute_loss(trainer.model, b),
        trainer.model,
        trainer.ref_model,
        batch,
        opts.steps,
    )
    model4, ref4 = fresh()
    theirs = run_method(
        "four_forward_t3d_style",
        lambda b: four_forward_loss(trainer, model4, ref4, b),
        model4,
        ref4,
        batch,
        opts.steps,
    )
    result = {
        "setup": {
            **vars(opts),
            "torch_threads": torch.get_num_threads(),
            "params_millions": sum(p.numel() for p in base.parameters()) / 1e6,
            "masked_tokens": int(batch["loss_mask"].sum()),
        },
        "ours": ours,
        "four_forward": theirs,
        "loss_abs_diff": abs(ours["loss_at_init"] - theirs["loss_at_init"]),
        "speedup": theirs["step_seconds_median"] / ours["step_seconds_median"],
        "dynamic_peak_ratio": ours["dynamic_peak_mib"] / theirs["dynamic_peak_mib"],
        "total_peak_ratio": ours["total_peak_mib"] / theirs["total_peak_mib"],
    }

    # LoRA: reference = base with adapters disabled vs a separate frozen copy of the base model
    from peft import LoraConfig

    lora = {}
    for name, separate in (("disabled_adapter_reference", False), ("separate_reference_copy", True)):
        gc.collect()
        model = copy.deepcopy(base)
        ref_model = copy.deepcopy(reference) if separate else None
        t = DDOTrainer(
            model,
            ref_model=ref_model,
            args=args,
            train_dataset=data,
            processing_class=tok,
            peft_config=LoraConfig(r=8, lora_alpha=16),
        )
        lora[name] = run_method(
            name, lambda b, t=t: t.compute_loss(t.model, b), t.model, t.ref_model, batch, max(1, opts.steps // 2)
        )
    lora["total_peak_ratio"] = (
        lora["disabled_adapter_reference"]["total_peak_mib"] / lora["separate_reference_copy"]["total_peak_mib"]
    )
    result["lora"] = lora
    result["objectives"] = measure_objectives(base, reference, tok, data, batch, settings, opts.steps)
    result["trailing_eos"] = trailing_eos
    result["memory_method"] = (
        "torch.profiler(profile_memory=True): running sum of CPU allocator alloc/free events during one steady-state "
        "optimizer step = dynamic peak; plus static bytes of live tensors (params, buffers, grads, AdamW state of "
        "policy and reference, each storage once) = total peak."
    )
    os.makedirs(os.path.dirname(opts.output), exist_ok=True)
    with open(opts.output, "w") as f:
        json.dump(result, f, indent=2)
    summary = {
        **summary,
        **{k: result[k] for k in ("loss_abs_diff", "speedup", "dynamic_peak_ratio", "total_peak_ratio")},
    }
    summary["lora_total_peak_ratio"] = lora["total_peak_ratio"]
    summary["step_time_vs_t3d"] = {k: v["step_time_vs_t3d"] for k, v in result["objectives"].items()}
    summary["ours_s"], summary["four_s"] = ours["step_seconds_median"], theirs["step_seconds_median"]
    summary["ours_total_mib"], summary["four_total_mib"] = ours["total_peak_mib"], theirs["total_peak_mib"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
