"""Golden fixtures for `trl_t3d.models.llada_moe`, produced by LLaDA-MoE's original code (transformers 4.57.1).

The original `configuration_lladamoe.py` / `modeling_lladamoe.py` are vendored in ZHZisZZ/dllm under
`dllm/pipelines/llada/models/`. This script runs them on tiny random configs that keep every feature of the published
LLaDA-MoE-7B-A1B config (softmax top-k routing with `expert_bias`, a shared expert, q/k norm, partial RoPE, GQA, a
dense layer through `moe_layer_freq`, `clip_qkv`) and writes `tests/golden/lladamoe/` and, with the other switches
(no expert bias, no shared expert, no q/k norm, MHA, full RoPE, tied embeddings), `tests/golden/lladamoe/plain/`.

    /tmp/venv457/bin/python tests/golden/gen_lladamoe.py --original /tmp/orig_lladamoe          # fixtures (old env)
    .venv/bin/python tests/golden/gen_lladamoe.py --make-student /tmp/lladamoe_student          # our student
    /tmp/venv457/bin/python tests/golden/gen_lladamoe.py --original /tmp/orig_lladamoe --check-student /tmp/lladamoe_student

`--original` holds the two files, e.g. `git -C <dllm mirror> show
HEAD:dllm/pipelines/llada/models/modeling_lladamoe.py > /tmp/orig_lladamoe/modeling_lladamoe.py`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _common  # tests/golden/_common.py: this directory is first on sys.path
import torch
from _common import build_original, copy_fixture, left_padding

HERE = Path(__file__).parent
FILES = ("configuration_lladamoe.py", "modeling_lladamoe.py")
MASK_ID = 159

TINY_CONFIG = {  # the published LLaDA-MoE-7B-A1B config.json keys, toy sizes
    "architectures": ["LLaDAMoEModelLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
        "AutoModel": "modeling_lladamoe.LLaDAMoEModel",
        "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
    },
    "clip_qkv": 2.0,
    "dense_intermediate_size": 64,
    "eos_token_id": 156,
    "expert_intermediate_size": 16,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "max_position_embeddings": 256,
    "model_type": "lladamoe",
    "moe_layer_freq": [0, 1, 1],
    "moe_router_enable_expert_bias": True,
    "moe_router_score_function": "softmax",
    "norm_topk_prob": False,
    "num_attention_heads": 4,
    "num_experts": 8,
    "num_experts_per_tok": 3,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "pad_token_id": 157,
    "partial_rotary_factor": 0.5,
    "qk_layernorm": True,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 50000.0,
    "routed_scaling_factor": 1,
    "router_aux_loss_coef": 0.01,
    "router_num_group": -2,
    "router_topk_group": -2,
    "shared_expert_intermediate_size": 24,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": False,
    "vocab_size": 160,
}
PLAIN_CONFIG = TINY_CONFIG | {
    "clip_qkv": None,
    "moe_layer_freq": [1, 1, 1],
    "moe_router_enable_expert_bias": False,
    "num_key_value_heads": 4,
    "partial_rotary_factor": 1.0,
    "qk_layernorm": False,
    "shared_expert_intermediate_size": None,
    "tie_word_embeddings": True,
    "num_experts_per_tok": 2,
}


def randomize(model, seed):
    """Peaked weights (mask or routing mistakes show), norms not all ones, a non-zero `expert_bias`."""
    _common.randomize(model, seed, scale=0.3, expert_bias_scale=0.05)


def golden_cases(model):
    gen = torch.Generator().manual_seed(1)
    out = {}

    def ids(*shape):
        return torch.randint(0, 150, shape, generator=gen)

    x = ids(2, 12)
    x[:, 5:9] = MASK_ID
    out |= {"no_mask.input_ids": x, "no_mask.logits": model(input_ids=x).logits}
    x = ids(2, 12)
    mask = left_padding([8, 12], 12)
    out |= {"padding.input_ids": x, "padding.attention_mask": mask}
    out["padding.logits"] = model(input_ids=x, attention_mask=mask).logits
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out["padding_positions.position_ids"] = positions
    out["padding_positions.logits"] = model(input_ids=x, attention_mask=mask, position_ids=positions).logits
    return {k: v.detach().contiguous() for k, v in out.items()}


def load_original():
    import transformers

    if not transformers.__version__.startswith("4.57"):
        raise SystemExit(f"Run this mode with transformers 4.57, not {transformers.__version__}.")
    return transformers


def write_fixture(args) -> None:
    from safetensors.torch import save_file

    transformers = load_original()
    original, out_root = Path(args.original).resolve(), Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for sub, config, seed in (("", TINY_CONFIG, 0), ("plain", PLAIN_CONFIG, 1)):
            checkpoint = Path(tmp) / (sub or "main")
            checkpoint.mkdir()
            for name in FILES:
                shutil.copy(original / name, checkpoint / name)
            model = build_original(transformers, checkpoint, config, randomize, seed)
            target = out_root / sub if sub else out_root
            copy_fixture(checkpoint, target)
            with torch.no_grad():
                tensors = golden_cases(model)
            meta = {"transformers": transformers.__version__, "torch": torch.__version__}
            save_file(tensors, str(target / "golden.safetensors"), metadata=meta)
            print(f"wrote {target} ({len(tensors)} tensors)")


def check_student(args) -> None:
    transformers = load_original()
    original, student = Path(args.original).resolve(), Path(args.check_student)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "student"
        shutil.copytree(student, checkpoint)
        for name in FILES:
            shutil.copy(original / name, checkpoint / name)
        _common.check_student(transformers, checkpoint, student, golden_cases)


def make_student(args) -> None:
    from trl_t3d.models.llada_moe import LLaDAMoEModelLM

    _common.save_student(LLaDAMoEModelLM.from_pretrained(args.out), randomize, golden_cases, args.make_student)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--original", help="directory with LLaDA-MoE's configuration_lladamoe.py / modeling_lladamoe.py"
    )
    parser.add_argument("--out", default=str(HERE / "lladamoe"), help="fixture directory")
    _common.run_mode(parser, "LLaDA-MoE", write_fixture, check_student, make_student)


if __name__ == "__main__":
    main()
