"""Training-step cost of a tiny native LLaDA2 MoE vs a dense LLaDA2 of equal active parameters (one run).

Both models are `trl_t3d.models.llada2.LLaDA2MoeModelLM` with the same attention, embeddings and depth; the MoE one
routes each token to `top_k` of `num_experts` experts plus a shared expert (the published configs' features: group-
limited sigmoid routing, `expert_bias`, routed scaling, a dense first layer), the dense one replaces every MoE layer by
one SwiGLU whose width equals the MoE's active width (`top_k * moe_intermediate_size + shared`), so both spend the
same multiply-adds per token in their MLPs. One step = T3D's training forward (the block-diffusion layout
`[prompt, x_0, x_t]` under its 4D mask, through the LLaDA2 adapter), cross-entropy on the masked positions, backward,
AdamW. Reported: median wall time of `--steps` steps after 2 warm-up steps, and the step's peak of live tensor bytes
(CPU: `torch.profiler(profile_memory=True)` allocation events; CUDA: `max_memory_allocated`), each with the MoE/dense
ratio. Writes benchmarks/results/moe_step.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/moe_step.py [--steps 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_bytes  # noqa: E402

from trl_t3d.adapters import LLaDA2Adapter  # noqa: E402
from trl_t3d.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM  # noqa: E402

SHAPE = dict(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
MOE = dict(num_experts=16, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=64,
           num_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5)  # fmt: skip
ACTIVE_WIDTH = MOE["num_experts_per_tok"] * MOE["moe_intermediate_size"] + MOE["moe_intermediate_size"]
MASK_ID = 511


def build(kind: str, device) -> LLaDA2MoeModelLM:
    common = dict(SHAPE, intermediate_size=ACTIVE_WIDTH, pad_token_id=0, attention_dropout=0.0, head_dim=32)
    config = LLaDA2MoeConfig(**common, **(MOE if kind == "moe" else {"num_experts": None}))
    torch.manual_seed(0)
    return LLaDA2MoeModelLM(config).to(device).train()


def batch(device, batch_size=4, prompt=32, completion=64, block=32):
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(1, 500, (batch_size, prompt), generator=gen)
    clean = torch.randint(1, 500, (batch_size, completion), generator=gen)
    masked = torch.rand(batch_size, completion, generator=gen) < 0.5
    noisy = clean.masked_fill(masked, MASK_ID)
    return [t.to(device) for t in (prompt_ids, clean, noisy, masked)] + [block]


def step(model, adapter, optimizer, data):
    prompt_ids, clean, noisy, masked, block = data
    logits = adapter.completion_logits(model, prompt_ids, None, noisy, clean_completion=clean, block_length=block)
    loss = F.cross_entropy(logits[masked].float(), clean[masked])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def static_bytes(model, optimizer) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(kind, device, steps):
    model = build(kind, device)
    adapter = LLaDA2Adapter(model.config, mask_token_id=MASK_ID)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = batch(device)
    for _ in range(2):
        step(model, adapter, optimizer, data)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(model, adapter, optimizer, data)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    dynamic = peak_bytes(lambda: step(model, adapter, optimizer, data), device)
    static = static_bytes(model, optimizer)
    total = sum(p.numel() for p in model.parameters())
    mlp_active = sum(
        p.numel()
        for name, p in model.named_parameters()
        if ".mlp." in name and ".experts." not in name and ".gate." not in name
    ) + sum(
        p.numel() * MOE["num_experts_per_tok"] / MOE["num_experts"]
        for name, p in model.named_parameters()
        if ".experts." in name
    )
    return {
        "parameters": total,
        "active_mlp_parameters": int(mlp_active),
        "step_seconds_median": statistics.median(times),
        "step_seconds": times,
        "dynamic_peak_bytes": dynamic,
        "static_bytes": static,
        "peak_bytes": dynamic + static,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "moe_step.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {kind: measure(kind, device, args.steps) for kind in ("dense", "moe")}
    moe, dense = results["moe"], results["dense"]
    report = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "shape": SHAPE,
        "moe": MOE,
        "dense_intermediate_size": ACTIVE_WIDTH,
        "batch": "4 x (32 prompt + 64 x_0 + 64 x_t), block 32, half the completion masked",
        "results": results,
        "ratio_moe_over_dense": {
            "step_time": moe["step_seconds_median"] / dense["step_seconds_median"],
            "dynamic_peak": moe["dynamic_peak_bytes"] / dense["dynamic_peak_bytes"],
            "peak": moe["peak_bytes"] / dense["peak_bytes"],
            "parameters": moe["parameters"] / dense["parameters"],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["ratio_moe_over_dense"], indent=2))
    for kind in ("dense", "moe"):
        r = results[kind]
        print(
            f"{kind}: {r['parameters']} params, step {r['step_seconds_median'] * 1e3:.1f} ms, "
            f"peak {r['peak_bytes'] / 2**20:.2f} MiB (dynamic {r['dynamic_peak_bytes'] / 2**20:.2f})"
        )


if __name__ == "__main__":
    main()
