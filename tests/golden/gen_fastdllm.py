"""Golden fixtures for prefix / dual KV-cache decoding, made by Fast-dLLM's ORIGINAL LLaDA code.

Fast-dLLM (NVlabs/Fast-dLLM, `llada/`) ships a modified LLaDA (`model/modeling_llada.py`, same parameter names as the
published LLaDA) and `generate.py` with `generate`, `generate_with_prefix_cache` and `generate_with_dual_cache`. This
script runs them in a transformers-4 environment on a tiny random LLaDA and records their tokens; trl_t3d's native
LLaDA class loads the same weights and must decode the same tokens with `cache="none" | "prefix" | "dual"`. The
original files are never copied into this repository: pass a local copy of Fast-dLLM's `llada/` directory (it must
hold `generate.py` and `model/`):

    /work/venvs/tf457/bin/python tests/golden/gen_fastdllm.py --original /tmp/fastdllm_llada --out tests/golden/fastdllm

writes `config.json` (as the original config class saves it, with LLaDA's published `auto_map`), `model.safetensors`,
`golden.safetensors` (prompts, then the sequences and forward counts of every case) and `cases.json` (every argument
of every call).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from _common import missing_files, store_sequences

SEED = 0
MASK_ID, EOS_ID = 126, 125  # LLaDA's mask / EOS roles in a tiny vocabulary (published: 126336 / 126081)
AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}
# The published LLaDA-8B config.json keys, tiny sizes.
TINY_CONFIG = {
    "d_model": 64,
    "n_heads": 4,
    "n_kv_heads": 4,
    "n_layers": 2,
    "mlp_ratio": 4,
    "mlp_hidden_size": 128,
    "activation_type": "silu",
    "block_type": "llama",
    "block_group_size": 1,
    "alibi": False,
    "alibi_bias_max": 8.0,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 10000.0,
    "flash_attention": False,
    "attention_dropout": 0.0,
    "multi_query_attention": None,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "residual_dropout": 0.0,
    "embedding_dropout": 0.0,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "rms_norm_eps": 1e-05,
    "bias_for_layer_norm": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "scale_logits": False,
    "max_sequence_length": 256,
    "vocab_size": 128,
    "embedding_size": 128,
    "weight_tying": False,
    "eos_token_id": EOS_ID,
    "pad_token_id": EOS_ID,
    "mask_token_id": MASK_ID,
    "init_device": "cpu",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "precision": "amp_bf16",
    "use_cache": False,
    "auto_map": AUTO_MAP,
}
# (name, prompt seed, prompt lengths, gen_length, block_length, steps, threshold). Fast-dLLM decodes one prompt at a
# time; prompts of different lengths let the test decode them as one left-padded batch. Thresholds 0.5 / 0.7 make
# steps commit several tokens on these weights, not always.
SETTINGS = (
    ("fixed_1_per_step", 1, (10, 6), 16, 4, 16, None),
    ("fixed_2_per_step", 2, (7, 12), 16, 8, 8, None),
    ("fixed_uneven", 3, (9,), 12, 6, 8, None),
    ("threshold_0.5", 4, (10, 5, 8), 16, 4, 16, 0.5),
    ("threshold_0.7", 5, (8,), 16, 8, 16, 0.7),
)
METHODS = ("generate", "generate_with_prefix_cache", "generate_with_dual_cache")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="a copy of Fast-dLLM's llada/ (generate.py + model/)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastdllm"))
    args = parser.parse_args()
    for name in missing_files(
        args.original, ("generate.py", "model/modeling_llada.py", "model/configuration_llada.py")
    ):
        parser.error(f"--original {args.original} lacks {name}")
    return args


def spread_weights(model, torch):
    """Weights of order one and a sharp output head, so that confidences spread over (0, 1) and thresholds decide
    (LLaDA's 0.02 init gives near-uniform predictions that no threshold passes)."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("transformer.ff_out.weight"):  # the output head
                param.copy_(16.0 * noise / param.shape[-1] ** 0.5)
            else:
                param.copy_(2.0 * noise / param.shape[-1] ** 0.5)
        # A trained LLaDA never predicts the mask token (trl_t3d never proposes it); a zero row keeps its logit at 0,
        # below the best of the others, so the original code never "commits" a mask either.
        model.model.transformer.ff_out.weight[MASK_ID].zero_()


def main():
    args = parse_args()
    sys.path.insert(0, os.path.abspath(args.original))
    import generate as fast_dllm  # Fast-dLLM's llada/generate.py
    import torch
    from model.configuration_llada import LLaDAConfig
    from model.modeling_llada import LLaDAModelLM
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    config = LLaDAConfig(**TINY_CONFIG)
    model = LLaDAModelLM(config, init_params=True).eval()
    spread_weights(model, torch)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    with open(os.path.join(args.out, "config.json")) as f:
        saved = json.load(f)
    saved["auto_map"] = AUTO_MAP
    saved["architectures"] = ["LLaDAModelLM"]
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)

    generator = torch.Generator()
    tensors, cases = {}, []
    for name, prompt_seed, lengths, gen_length, block_length, steps, threshold in SETTINGS:
        generator.manual_seed(SEED + prompt_seed)
        for row, length in enumerate(lengths):
            prompt = torch.randint(0, EOS_ID, (1, length), generator=generator)
            tensors[f"{name}/{row}/prompt"] = prompt.contiguous()
            for method in METHODS:
                with torch.no_grad():
                    sequences, nfe = getattr(fast_dllm, method)(
                        model,
                        prompt,
                        steps=steps,
                        gen_length=gen_length,
                        block_length=block_length,
                        temperature=0.0,
                        remasking="low_confidence",
                        mask_id=MASK_ID,
                        threshold=threshold,
                    )
                key = f"{name}/{row}/{method}"
                store_sequences(tensors, key, sequences, MASK_ID)
                tensors[f"{key}/nfe"] = torch.tensor([int(nfe)])
                print(f"{key}: nfe {nfe}, tokens per forward {gen_length / nfe:.2f}")
        cases.append(
            {
                "name": name,
                "num_prompts": len(lengths),
                "prompt_lengths": list(lengths),
                "methods": list(METHODS),
                "gen_length": gen_length,
                "block_length": block_length,
                "steps": steps,
                "threshold": threshold,
                "temperature": 0.0,
                "remasking": "low_confidence",
                "mask_id": MASK_ID,
            }
        )
    save_file(tensors, os.path.join(args.out, "golden.safetensors"))
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "cases": cases}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
