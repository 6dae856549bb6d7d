"""One DDO optimizer step: ours (1 reference + 1 policy forward) vs a faithful four-forward T3D-style step; and the
objectives' step cost on native LLaDA and SDAR.

Writes benchmarks/results/train_step.json. Usage:

    OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/train_step.py [--steps 5]
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --states_only   # only the trailing-EOS measurement below
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --only objective_cost [--output FILE]   # only the objectives

Runs unchanged on a CUDA device when one is present (`--device auto`, the default): there the Llama comparison keeps
fp32 weights under bf16 autocast, and the native models are loaded in bf16 with SDPA attention and trained as
`DDOConfig(bf16=True)` trains them (fp32 master weights for full fine-tuning, bf16 autocast). On the CPU: fp32.

Objective cost (`objective_cost`, `objective_cost` in the JSON; also called by benchmarks/device_check.py at 1B):
one optimizer step of ntd, t3d, t3d_mf (the default), tad, sft and t3d_mf with `mean_field_queries=1,
mean_field_positions=k` (k = 1, 4, 8), on one native model (LLaDA trained in blocks of 32 over a 64-token canvas,
SDAR in blocks of 4) and one batch of states, full fine-tuning with one shared policy, reference and AdamW;
interleaved rounds (each objective once per round, order rotated), median step time, ratio to the t3d step. State
forwards per micro-step are counted with forward hooks on the policy and the reference (split by grad enabled), and
peak memory is `torch.cuda.max_memory_allocated` on a GPU and the profiler method below on the CPU.

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
import sys
import time

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_bytes  # noqa: E402

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
    return testing.synthetic_trajectories(
        tok, n, completion_length, block_length, seed, prompt_lengths=(prompt_length,)
    )


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


def dynamic_peak(step_fn, device=None) -> int:
    """Peak memory of `step_fn` above what was live before (`_common.peak_bytes`), on `device` (default DEVICE)."""
    return peak_bytes(step_fn, device or DEVICE)


def run_method(name, loss_fn, model, ref_model, batch, steps, extra_static=()):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        return loss

    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
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
    dyn = dynamic_peak(step, DEVICE)
    return {
        "method": name,
        "loss_at_init": first_loss,
        "step_seconds_median": statistics.median(times),
        "step_seconds_all": times,
        "static_mib": static / 2**20,
        "dynamic_peak_mib": dyn / 2**20,
        "total_peak_mib": (static + dyn) / 2**20,
    }


# ---------------------------------------------------------------------------------------------- device
def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the CUDA device when one is present, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (weights loaded in bf16 as users load them; full fine-tuning keeps fp32 master weights and runs
    under bf16 autocast, DDOConfig's GPU default), fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- native models
# Sizes of the native LLaDA / SDAR built with random weights. "bench": this file's existing geometry (hidden 256,
# 4 layers, vocab 8192: the CPU ratios); "1b": about 1.1B parameters with the published vocabularies (GPU check).
NATIVE_SIZES = {
    "tiny": {
        "llada": dict(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=128, vocab=512),
        "sdar": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512),
    },
    "bench": {
        "llada": dict(hidden=256, layers=4, heads=4, kv_heads=4, intermediate=512, vocab=8192),
        "sdar": dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512, vocab=8192),
    },
    "1b": {  # LLaDA-8B's vocabulary (126464, untied), SDAR/Qwen3's (151936, untied here); d_model 2048
        "llada": dict(hidden=2048, layers=12, heads=16, kv_heads=16, intermediate=5632, vocab=126464),
        "sdar": dict(hidden=2048, layers=12, heads=16, kv_heads=8, intermediate=6144, vocab=151936),
    },
}


def native_model(family: str, size: str | dict, tok, device, dtype, seed: int = 0):
    """A native `LLaDAModelLM` / `SDARForCausalLM` (trl_t3d.models, the classes users load) with random weights,
    built on `device` in `dtype`, attention through SDPA."""
    s = NATIVE_SIZES[size][family] if isinstance(size, str) else size
    torch.manual_seed(seed)
    if family == "llada":
        from trl_t3d.models.llada import LLaDAConfig, LLaDAModelLM

        config = LLaDAConfig(
            d_model=s["hidden"],
            n_heads=s["heads"],
            n_kv_heads=s["kv_heads"],
            n_layers=s["layers"],
            mlp_hidden_size=s["intermediate"],
            block_type="llama",
            activation_type="silu",
            layer_norm_type="rms",
            rms_norm_eps=1e-5,
            rope=True,
            rope_theta=500000.0,
            attention_dropout=0.0,
            residual_dropout=0.0,
            embedding_dropout=0.0,
            vocab_size=s["vocab"],
            embedding_size=s["vocab"],
            weight_tying=False,
            include_bias=False,
            include_qkv_bias=False,
            max_sequence_length=4096,
            mask_token_id=tok.mask_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            auto_map=dict(testing.LLADA_AUTO_MAP),
            attn_implementation="sdpa",
        )
        cls = LLaDAModelLM
    elif family == "sdar":
        from trl_t3d.models.sdar import SDARConfig, SDARForCausalLM

        config = SDARConfig(
            vocab_size=s["vocab"],
            hidden_size=s["hidden"],
            intermediate_size=s["intermediate"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            head_dim=s["hidden"] // s["heads"],
            max_position_embeddings=4096,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            mask_token_id=tok.mask_token_id,
            auto_map=dict(testing.SDAR_AUTO_MAP),
            attn_implementation="sdpa",
        )
        cls = SDARForCausalLM
    else:
        raise ValueError(f"family must be 'llada' or 'sdar', got {family!r}")
    with torch.device(device):
        model = cls(config)
    return model.to(dtype).eval()


def model_facts(model) -> dict:
    return {
        "class": type(model).__name__,
        "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "dtype": str(next(model.parameters()).dtype),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


# ---------------------------------------------------------------------------------------------- objective cost
def objective_variants(mean_field_positions=(1, 4, 8)) -> dict:
    """The objectives whose step cost is measured, as DDOConfig overrides (named by the JSON keys)."""
    variants = {name: dict(loss_type=name) for name in ("ntd", "t3d", "t3d_mf", "tad", "sft")}
    for k in mean_field_positions:
        variants[f"t3d_mf_q1_p{k}"] = dict(loss_type="t3d_mf", mean_field_queries=1, mean_field_positions=k)
    return variants


class ForwardCounter:
    """Counts forwards of the policy and reference modules (forward hooks), split by whether grad was enabled."""

    def __init__(self, roles: dict):
        self.counts, self.handles = {}, []
        for role, module in roles.items():
            if module is not None:
                self.handles.append(module.register_forward_hook(self._hook(role)))

    def _hook(self, role):
        def hook(module, args, output):
            key = f"{role}_{'grad' if torch.is_grad_enabled() else 'no_grad'}"
            self.counts[key] = self.counts.get(key, 0) + 1

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _inner(module):
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def objective_cost(
    family: str,
    size,
    tok,
    device=None,
    *,
    batch: int = 8,
    prompt_length: int = 32,
    completion_length: int = 64,
    block_length: int = 32,
    lora: bool = False,
    steps: int = 5,
    budget_s: float | None = None,
    variants: dict | None = None,
    lora_rank: int = 16,
    bf16: bool | None = None,
    progress=print,
) -> dict:
    """Step time of each objective as a ratio to a `loss_type="t3d"` step, on one native model and one batch of
    states, with interleaved runs (every round steps each objective once, in a rotated order) and the median step
    time; plus state forwards per micro-step (forward hooks) and peak memory per objective.

    Full fine-tuning: one policy, one frozen reference and one AdamW shared by every objective's trainer (so the
    weights, states and optimizer are the same; only the loss differs). LoRA: each objective its own copy of the
    same base with fresh adapters (the reference is the base with adapters disabled, as a user gets it).
    One optimizer step = autocast forward(s) + backward + AdamW step, as `Trainer` runs it (no activation
    checkpointing). On a GPU the weights are loaded in bf16 and `DDOConfig(bf16=True)` applies (fp32 master weights
    for full fine-tuning, bf16 autocast); on the CPU everything is fp32.

    `budget_s` bounds the timed rounds (at least 2 after the warm-up): the section stops early when spent.
    `bf16` (default: on a GPU) forces the GPU's precision setup, e.g. to check that path on the CPU.
    """
    device = device or resolve_device()
    bf16 = device.type == "cuda" if bf16 is None else bf16
    dtype = torch.bfloat16 if bf16 else torch.float32
    variants = variants or objective_variants()
    start = time.perf_counter()
    data = trajectories(tok, batch, prompt_length, completion_length, block_length)
    settings = dict(
        use_cpu=device.type == "cpu",
        report_to="none",
        activation_checkpointing=False,
        per_device_train_batch_size=batch,
        save_strategy="no",
        disable_tqdm=True,
        bf16=bf16,
    )
    base = native_model(family, size, tok, device, dtype)
    facts = model_facts(base)
    if lora:
        from peft import LoraConfig

    policy = reference = shared_optimizer = None
    if not lora:
        reference = copy.deepcopy(base).eval().requires_grad_(False)
        policy = base.train()
    trainers, optimizers = {}, {}
    for name, overrides in variants.items():
        args = DDOConfig(f"/tmp/ddo-bench-{family}", **settings, **overrides)
        if lora:
            t = DDOTrainer(
                copy.deepcopy(base).train(),
                args=args,
                train_dataset=data,
                processing_class=tok,
                peft_config=LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0),
            )
            optimizers[name] = torch.optim.AdamW([p for p in t.model.parameters() if p.requires_grad], lr=1e-5)
        else:
            t = DDOTrainer(policy, ref_model=reference, args=args, train_dataset=data, processing_class=tok)
            if shared_optimizer is None:  # after the first trainer made the fp32 master weights (GPU)
                shared_optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
            optimizers[name] = shared_optimizer
        trainers[name] = t
    if lora:
        del base
    first = next(iter(trainers.values()))
    batch_states = {
        k: v.to(device) if torch.is_tensor(v) else v
        for k, v in first.data_collator([data[i] for i in range(batch)]).items()
    }

    def step(name):
        t, optimizer = trainers[name], optimizers[name]
        t.model.train()
        with t.accelerator.autocast():
            loss = t.compute_loss(t.model, batch_states)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    results = {name: {"overrides": overrides} for name, overrides in variants.items()}
    # warm-up step of each objective (AdamW state, kernels), counting its forwards
    for name, t in trainers.items():
        roles = {"policy": _inner(t.model)}
        if t.ref_model is not None:
            roles["reference"] = t.ref_model
        counter = ForwardCounter(roles)
        try:
            loss = step(name)
        finally:
            counter.remove()
        sync(device)
        results[name]["loss_at_warmup"] = float(loss.detach())
        results[name]["forwards_per_micro_step"] = dict(sorted(counter.counts.items()))
        results[name]["forwards_total"] = sum(counter.counts.values())
    names = list(trainers)
    times = {name: [] for name in names}
    peaks = {name: 0 for name in names}
    statics = {name: 0 for name in names}
    rounds = 0
    timed_start = time.perf_counter()
    while rounds < steps:
        elapsed = time.perf_counter() - start
        if budget_s is not None and rounds >= 2 and elapsed > budget_s:
            break
        order = names[rounds % len(names) :] + names[: rounds % len(names)]
        for name in order:
            if device.type == "cuda":
                sync(device)
                statics[name] = max(statics[name], torch.cuda.memory_allocated(device))
                torch.cuda.reset_peak_memory_stats(device)
            gc.collect() if device.type == "cpu" else None
            t0 = time.perf_counter()
            step(name)
            sync(device)
            times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
        rounds += 1
        progress(
            f"  {family} {'lora' if lora else 'full'} round {rounds}: "
            + ", ".join(f"{n} {times[n][-1] * 1000:.0f}ms" for n in names)
        )
    timed_seconds = time.perf_counter() - timed_start
    if device.type == "cuda":
        memory_method = (
            "torch.cuda.max_memory_allocated over the timed steps of the objective (reset before each step), "
            "including weights, grads and AdamW state; static = memory_allocated before the step"
        )
    else:
        memory_method = (
            "CPU: torch.profiler(profile_memory=True) over one extra step: running sum of the CPU allocator's "
            "alloc/free events = dynamic peak, plus the bytes of live tensors (params, buffers, grads, AdamW state, "
            "reference) = static; ru_maxrss (process-wide high-water mark, not per objective) reported beside"
        )
    for name in names:
        t = trainers[name]
        if device.type == "cpu":
            static = static_bytes(t.model, *([t.ref_model] if t.ref_model is not None else []), optimizers[name])
            dyn = dynamic_peak(lambda name=name: step(name), device)
            results[name]["static_mib"] = round(static / 2**20, 1)
            results[name]["dynamic_peak_mib"] = round(dyn / 2**20, 1)
            results[name]["peak_mib"] = round((static + dyn) / 2**20, 1)
        else:
            results[name]["static_mib"] = round(statics[name] / 2**20, 1)
            results[name]["peak_mib"] = round(peaks[name] / 2**20, 1)
        results[name]["step_seconds_median"] = statistics.median(times[name])
        results[name]["step_seconds_all"] = [round(x, 5) for x in times[name]]
    for name in names:
        results[name]["step_time_vs_t3d"] = round(
            results[name]["step_seconds_median"] / results["t3d"]["step_seconds_median"], 3
        )
    out = {
        "family": family,
        "model": facts,
        "mode": f"lora r={lora_rank} (all of the family's target modules)" if lora else "full fine-tuning",
        "device": str(device),
        "geometry": dict(
            batch=batch, prompt_length=prompt_length, completion_length=completion_length, block_length=block_length
        ),
        "masked_tokens": int(batch_states["loss_mask"].sum()),
        "rounds": rounds,
        "timed_seconds": round(timed_seconds, 1),
        "section_seconds": round(time.perf_counter() - start, 1),
        "method": "interleaved rounds (each objective once per round, order rotated), after one warm-up step "
        "each; median step time; ratio to the t3d step's median",
        "memory_method": memory_method,
        "objectives": results,
    }
    if device.type == "cpu":
        import resource

        out["ru_maxrss_mib_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    trainers.clear()
    optimizers.clear()
    del policy, reference, shared_optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def measure_objective_cost(tok, opts) -> dict:
    """The objectives' step cost on native LLaDA (block 32 over a 64-token canvas) and native SDAR (block 4), full
    fine-tuning, at `--native_size`, batch `--batch`, prompt `--prompt_length`."""
    out = {"machine": machine(DEVICE)}
    for family, block in (("llada", 32), ("sdar", 4)):
        out[family] = objective_cost(
            family,
            opts.native_size,
            tok,
            DEVICE,
            batch=opts.batch,
            prompt_length=opts.prompt_length,
            completion_length=64,
            block_length=block,
            steps=opts.steps,
            budget_s=opts.budget_s,
        )
    return out


def objective_cost_summary(cost: dict) -> dict:
    return {
        family: {
            name: {"vs_t3d": r["step_time_vs_t3d"], "forwards": r["forwards_total"], "peak_mib": r["peak_mib"]}
            for name, r in part["objectives"].items()
        }
        for family, part in cost.items()
        if isinstance(part, dict) and "objectives" in part
    }


def machine(device) -> str:
    import platform

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, torch threads {torch.get_num_threads()}, torch {torch.__version__}"


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
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    parser.add_argument(
        "--dtype", default="float32", help="weights of the Llama comparison (on a GPU: fp32 weights, bf16 autocast)"
    )
    parser.add_argument(
        "--only", choices=["objective_cost"], help="only the native objective-cost measurement, merged into --output"
    )
    parser.add_argument(
        "--native_size", default="bench", choices=sorted(NATIVE_SIZES), help="size of the native LLaDA/SDAR"
    )
    parser.add_argument("--budget_s", type=float, default=None, help="time budget per objective-cost section")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--state_examples", type=int, default=512, help="trajectories per shape (trailing EOS)")
    parser.add_argument(
        "--states_only", action="store_true", help="only the trailing-EOS measurement, merged into --output"
    )
    opts = parser.parse_args()
    global DEVICE
    DEVICE = resolve_device(opts.device)
    dtype = getattr(torch, opts.dtype)
    torch.manual_seed(0)
    tok = testing.make_tokenizer()
    if opts.only == "objective_cost":
        result = json.load(open(opts.output)) if os.path.exists(opts.output) else {}
        result["objective_cost"] = measure_objective_cost(tok, opts)
        os.makedirs(os.path.dirname(opts.output), exist_ok=True)
        with open(opts.output, "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps(objective_cost_summary(result["objective_cost"]), indent=2))
        return
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
        activation_checkpointing=False,
        bf16=DEVICE.type == "cuda",
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
    result["objective_cost"] = measure_objective_cost(tok, opts)
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
    summary["objective_cost"] = objective_cost_summary(result["objective_cost"])
    summary["ours_s"], summary["four_s"] = ours["step_seconds_median"], theirs["step_seconds_median"]
    summary["ours_total_mib"], summary["four_total_mib"] = ours["total_peak_mib"], theirs["total_peak_mib"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
