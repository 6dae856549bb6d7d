"""Device check of the native LLaDA2 class: bf16 vs fp32 logits and decoding speed of a random-init ~1B LLaDA2.

A random LLaDA2.0-style MoE (~0.93B parameters: hidden 1024, 12 layers, 32 experts top-4 in 8 groups, a shared expert,
a dense first layer, LLaDA2's 157184-token vocabulary) is built in float32 on the device, then cast to bfloat16:

1. logits of a batch (2 x 512 tokens, LLaDA2's block mask of 32, half the second half masked) in fp32 and bf16:
   max / mean absolute difference, relative to the fp32 logits' std, and argmax agreement;
2. decoding in bf16: LLaDA2's own sampler (`llada2_generate`, blocks aligned to absolute positions, threshold 0.95,
   full-prefix forwards as the original) and `diffusion_generate` (completion-aligned blocks, exact block KV cache),
   one prompt of 64 tokens, 256 new tokens, blocks of 32: tokens/s, forwards, wall time (after one warm-up call).

Writes JSON to `$OUT/llada2_device_check.json` when `$OUT` is set, else benchmarks/results/. Usage:

    python benchmarks/llada2_device_check.py            # CUDA when present (the ~1B model)
    python benchmarks/llada2_device_check.py --tiny     # a tiny config, for a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from trl_t3d.adapters import LLaDA2Adapter
from trl_t3d.generation import diffusion_generate
from trl_t3d.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM, llada2_generate

ONE_B = dict(
    vocab_size=157184, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=8,
    num_key_value_heads=2, head_dim=128, num_experts=32, num_experts_per_tok=4, n_group=8, topk_group=4,
    moe_intermediate_size=512, num_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
)  # fmt: skip
TINY = dict(
    vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
    moe_intermediate_size=32, num_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
)  # fmt: skip


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny config (CPU smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new_tokens", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = TINY if args.tiny else ONE_B
    mask_id, eos_id, pad_id = shape["vocab_size"] - 1, shape["vocab_size"] - 4, shape["vocab_size"] - 5
    config = LLaDA2MoeConfig(
        **shape, pad_token_id=pad_id, eos_token_id=eos_id, attention_dropout=0.0, partial_rotary_factor=0.5,
        rope_theta=600000.0, use_qkv_bias=False, use_bias=False, max_position_embeddings=8192,
    )  # fmt: skip
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):  # initialized on the device (no 4 GB fp32 copy on the host)
        model = LLaDA2MoeModelLM(config).eval()
    build_seconds = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.parameters())

    # 1. bf16 vs fp32 logits under LLaDA2's block mask
    gen = torch.Generator().manual_seed(1)
    length, block = (512, 32) if not args.tiny else (64, 8)
    ids = torch.randint(0, shape["vocab_size"] - 8, (2, length), generator=gen)
    tail = torch.rand(2, length // 2, generator=gen) < 0.5
    ids[:, length // 2 :] = ids[:, length // 2 :].masked_fill(tail, mask_id)
    blocks = torch.arange(length) // block
    mask = (blocks[None, :] <= blocks[:, None]).float().log()[None, None]
    ids, mask, positions = ids.to(device), mask.to(device), torch.arange(length, device=device)[None]
    with torch.no_grad():
        fp32 = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        model = model.to(torch.bfloat16)
        bf16 = model(input_ids=ids, attention_mask=mask.to(torch.bfloat16), position_ids=positions).logits
    delta = (bf16.float() - fp32).abs()
    logits = {
        "max_abs_diff": delta.max().item(),
        "mean_abs_diff": delta.mean().item(),
        "fp32_logits_std": fp32.std().item(),
        "max_abs_diff_over_std": delta.max().item() / fp32.std().item(),
        "argmax_agreement": (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item(),
        "bf16_logits_dtype": str(bf16.dtype),
    }
    del fp32, bf16, delta

    # 2. decoding speed in bf16
    prompt = torch.randint(0, shape["vocab_size"] - 8, (1, 64), generator=gen).to(device)
    new_tokens = args.new_tokens if not args.tiny else 32
    decode = {}

    def own():
        return llada2_generate(model, prompt, mask_token_id=mask_id, max_new_tokens=new_tokens, block_length=32,
                               steps=32, threshold=0.95, return_dict=True)  # fmt: skip

    adapter = LLaDA2Adapter(config, mask_token_id=mask_id)

    def generic():
        return diffusion_generate(model, prompt, adapter=adapter, max_new_tokens=new_tokens, block_length=32,
                                  tokens_per_step=1, stop_at_eos=False, return_dict_in_generate=True,
                                  use_cache=True)  # fmt: skip

    for name, fn in (("llada2_generate", own), ("diffusion_generate_block_cache", generic)):
        fn()  # warm-up
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - start
        forwards = int(out.nfe.max()) if name == "llada2_generate" else int(out.nfe)
        decode[name] = {"seconds": seconds, "new_tokens": new_tokens, "tokens_per_second": new_tokens / seconds,
                        "forwards": forwards, "forwards_per_second": forwards / seconds}  # fmt: skip

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": "tiny" if args.tiny else "~1B",
        "parameters": parameters,
        "build_seconds": build_seconds,
        "logits_bf16_vs_fp32": logits,
        "decode_bf16": decode,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "llada2_device_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
