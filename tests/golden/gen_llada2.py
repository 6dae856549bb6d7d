"""Golden fixtures for `trl_t3d.models.llada2`, produced by LLaDA2.0's and LLaDA2.1's original code.

The original modeling files (`modeling_llada2_moe.py` needs transformers 4.x: `modeling_attn_mask_utils`) and
samplers are vendored in ZHZisZZ/dllm under `dllm/pipelines/llada2/` and `dllm/pipelines/llada21/`. This script runs
them with transformers 4.57.1 on tiny random configs that keep every MoE feature of the published configs (sigmoid
top-k routing with `expert_bias`, group-limited routing, shared expert, routed scaling, a dense first layer, partial
RoPE, q/k norm, GQA with head_dim != hidden/heads) and writes `tests/golden/llada2/` (LLaDA2.0, `llada2_moe`) and
`tests/golden/llada2/llada21/` (LLaDA2.1, `llada21_moe`, the other switches: biases, MHA through
`num_key_value_heads=0`, tied embeddings, no shared expert). The original files are copied into temporary checkpoint
directories, never into `--out`.

The samplers import `dllm.core.samplers.base` (three small dataclasses); a stand-in with the same fields is installed,
the sampling code itself is the original's. The forward the samplers call differs from the model's in two ways:
- the samplers build their block mask in bfloat16 (`.to(torch.bfloat16)`) for a bfloat16 model; the fixtures run the
  model in float32, so that additive mask (0 / -inf, exact in either dtype) is cast to float32 (sdpa refuses a
  bfloat16 mask with float32 queries);
- the mask token's logit is -inf. Neither sampler keeps the model from predicting the mask token; a random tiny model
  predicts it at ~8% of positions, and committing it leaves the position masked, so LLaDA2.1's `while True` block
  loop never ends (LLaDA2.0's runs out of steps). trl_t3d's samplers never predict the mask token (its logit is
  -inf before the softmax), which is exactly this.

    # 1. write the fixtures (old env)
    /tmp/venv457/bin/python tests/golden/gen_llada2.py --original /tmp/orig_llada2 --original21 /tmp/orig_llada21
    # 2. save a student with OUR class (weights changed) and our logits (project env)
    .venv/bin/python tests/golden/gen_llada2.py --make-student /tmp/llada2_student
    # 3. load that student with the ORIGINAL code and compare its logits with ours (old env)
    /tmp/venv457/bin/python tests/golden/gen_llada2.py --original /tmp/orig_llada2 --check-student /tmp/llada2_student

`--original` holds `configuration_llada2_moe.py`, `modeling_llada2_moe.py` and `sampler.py`, e.g.
`git -C <dllm mirror> show HEAD:dllm/pipelines/llada2/sampler.py > /tmp/orig_llada2/sampler.py`; `--original21` the
same three files of `dllm/pipelines/llada21/` (`configuration_llada21_moe.py`, `modeling_llada21_moe.py`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import _common  # tests/golden/_common.py: this directory is first on sys.path
import torch
from _common import build_original, copy_fixture, prefill_then_forward, training_layout

HERE = Path(__file__).parent
MASK_ID, EOS_ID, PAD_ID = 159, 156, 157  # the tiny vocabulary's last ids play <|mask|>, <|endoftext|>, pad
BLOCK = 4

TINY_CONFIG = {  # the published LLaDA2.0-mini config.json keys, toy sizes
    "architectures": ["LLaDA2MoeModelLM"],
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
    },
    "embedding_dropout": 0.0,
    "eos_token_id": EOS_ID,
    "first_k_dense_replace": 1,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "max_window_layers": 3,
    "model_type": "llada2_moe",
    "moe_intermediate_size": 16,
    "moe_router_enable_expert_bias": True,
    "n_group": 4,
    "norm_head": False,
    "norm_softmax": False,
    "norm_topk_prob": True,
    "num_attention_heads": 4,
    "num_experts": 8,
    "num_experts_per_tok": 3,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "num_shared_experts": 1,
    "output_dropout": 0.0,
    "output_router_logits": False,
    "pad_token_id": PAD_ID,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 600000,
    "rotary_dim": 8,
    "routed_scaling_factor": 2.5,
    "router_dtype": "fp32",
    "score_function": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 2,
    "torch_dtype": "float32",
    "use_bias": False,
    "use_cache": True,
    "use_qk_norm": True,
    "use_qkv_bias": False,
    "use_rmsnorm": True,
    "using_split_qkv_in_self_attention": False,
    "vocab_size": 160,
}
TINY_CONFIG_21 = TINY_CONFIG | {
    "model_type": "llada21_moe",
    "auto_map": {
        "AutoConfig": "configuration_llada21_moe.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada21_moe.LLaDA2MoeModel",
        "AutoModelForCausalLM": "modeling_llada21_moe.LLaDA2MoeModelLM",
    },
    "num_key_value_heads": 0,  # LLaDA2.1's code reads 0 as one key/value head per query head
    "use_bias": True,
    "use_qkv_bias": True,
    "tie_word_embeddings": True,
    "num_shared_experts": None,
    "num_experts_per_tok": 2,
    "routed_scaling_factor": 1.5,
}
FILES = {
    "llada2": ("configuration_llada2_moe.py", "modeling_llada2_moe.py"),
    "llada21": ("configuration_llada21_moe.py", "modeling_llada21_moe.py"),
}

# Sampler cases: prompt lengths straddle the block (absolute alignment: a prompt of 6 shares its second block with
# the completion), thresholds low enough that the threshold rule commits several tokens at once.
SAMPLER_PROMPTS = [6, 8, 3, 5]
SAMPLER_LLADA2 = [  # (name, kwargs of LLaDA2Sampler.sample)
    ("t095", {"max_new_tokens": 10, "block_size": BLOCK, "steps_per_block": 4, "threshold": 0.95}),
    ("t03", {"max_new_tokens": 10, "block_size": BLOCK, "steps_per_block": 4, "threshold": 0.3}),
    ("t01_steps2", {"max_new_tokens": 9, "block_size": BLOCK, "steps_per_block": 2, "threshold": 0.1}),
]
SAMPLER_LLADA21 = [  # (name, kwargs of LLaDA21Sampler.sample)
    ("edit", {"max_new_tokens": 10, "block_size": BLOCK, "threshold": 0.5, "editing_threshold": 0.3}),
    (
        "edit_post2",
        {
            "max_new_tokens": 9,
            "block_size": BLOCK,
            "threshold": 0.3,
            "editing_threshold": 0.2,
            "max_post_steps": 2,
            "num_to_transfer": 2,
        },
    ),
    ("no_edit", {"max_new_tokens": 10, "block_size": BLOCK, "threshold": 0.5, "editing_threshold": 1.0}),
]

BASE_STANDIN = '''
"""Stand-in for dllm.core.samplers.base: the three dataclasses the LLaDA2 samplers subclass (same fields)."""
from dataclasses import dataclass

import torch


@dataclass
class BaseSamplerOutput:
    sequences: torch.Tensor
    histories: list | None = None


@dataclass
class BaseSamplerConfig:
    return_dict: bool = False


@dataclass
class BaseSampler:
    model: object
    tokenizer: object
    scheduler: object = None
'''


class TinyTokenizer:
    """What the samplers read from a tokenizer."""

    mask_token_id = MASK_ID
    eos_token_id = EOS_ID


# --------------------------------------------------------------------------------------------- helpers (both envs)
def randomize(model, seed):
    """Weights big enough that attention and routing are peaked (mask or routing mistakes show), norms not all ones,
    and a non-zero `expert_bias` (it chooses experts without weighing them)."""
    _common.randomize(model, seed, scale=0.3, expert_bias_scale=0.5)


def block_mask_additive(total, block):
    """LLaDA2's sampler mask: log of the 0/1 block-lower-triangular mask (0 visible, -inf hidden), (1, 1, T, T)."""
    blocks = torch.arange(total) // block
    return (blocks[None, :] <= blocks[:, None]).float().log()[None, None]


def golden_cases(model, cache_class):
    """Inputs and the model's fp32 outputs for every calling convention LLaDA2's callers use."""
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    out = {}

    def ids(*shape):
        return torch.randint(0, vocab - 4, shape, generator=gen)

    # (a) no mask: bidirectional; labels at the same positions; router logits of the MoE layers
    x, labels = ids(2, 12), ids(2, 12)
    labels[0, :3] = -100
    res = model(input_ids=x, labels=labels, use_cache=False, output_router_logits=True)
    out |= {"no_mask.input_ids": x, "no_mask.labels": labels, "no_mask.logits": res.logits, "no_mask.loss": res.loss}
    for i, router_logits in enumerate(res.router_logits):
        out[f"no_mask.router_logits.{i}"] = router_logits[0] if isinstance(router_logits, tuple) else router_logits

    # (b) the sampler's form: one sequence, additive block mask (log of 0/1), positions from 0
    x = ids(2, 3 * BLOCK)
    x[:, 7:] = MASK_ID
    mask = block_mask_additive(3 * BLOCK, BLOCK)
    res = model(input_ids=x, attention_mask=mask, position_ids=torch.arange(3 * BLOCK)[None], use_cache=False)
    out |= {"sampler.input_ids": x, "sampler.attention_mask": mask, "sampler.logits": res.logits}

    # (c) the T3D training layout [prompt, x_0, x_t] under a 4D bool mask, left-padded prompts, explicit positions
    x, allowed, pos = training_layout(ids, gen, MASK_ID, BLOCK)
    res = model(input_ids=x, attention_mask=allowed, position_ids=pos, use_cache=False)
    out |= {"block_bool.input_ids": x, "block_bool.attention_mask": allowed, "block_bool.position_ids": pos}
    out["block_bool.logits"] = res.logits

    # (d) a KV cache: two finished blocks stored, then the third block reads them (additive mask over cache + chunk)
    x = ids(1, 3 * BLOCK)
    mask = block_mask_additive(3 * BLOCK, BLOCK)
    cache = cache_class()
    pos = torch.arange(3 * BLOCK)[None]
    res = prefill_then_forward(model, x, mask, pos, cache, split=2 * BLOCK)
    out |= {"kv.input_ids": x, "kv.logits": res.logits, "kv.cache_length": torch.tensor(cache.get_seq_length())}
    return {k: v.detach().contiguous() for k, v in out.items()}


def sampler_prompts():
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, 150, (n,), generator=gen) for n in SAMPLER_PROMPTS]


# --------------------------------------------------------------------------------------------- the old environment
def load_original(work: Path):
    import transformers

    if not transformers.__version__.startswith("4.57"):
        raise SystemExit(f"Run this mode with transformers 4.57 (LLaDA2's), not {transformers.__version__}.")
    base = work / "standins" / "dllm" / "core" / "samplers"
    base.mkdir(parents=True)
    for package in (base.parent.parent, base.parent, base):
        (package / "__init__.py").write_text("")
    (base / "base.py").write_text(textwrap.dedent(BASE_STANDIN))
    sys.path.insert(0, str(work / "standins"))
    return transformers


def make_checkpoint(transformers, original: Path, files, config: dict, checkpoint: Path, seed: int):
    checkpoint.mkdir()
    for name in files:
        if not (original / name).is_file():
            raise SystemExit(f"{original} lacks {name}: extract the original files there first.")
        shutil.copy(original / name, checkpoint / name)
    return build_original(transformers, checkpoint, config, randomize, seed)


class Float32Masks(torch.nn.Module):
    """The model as the samplers call it: their bfloat16 additive mask cast to float32, the mask token never predicted."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.device = model, model.device

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        out = self.inner(input_ids, attention_mask=attention_mask, **kwargs)
        out.logits[..., MASK_ID] = float("-inf")
        return out


def load_sampler(original: Path, module_name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name, original / "sampler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sampler_cases(model, original: Path, version: str):
    out = {}
    prompts = sampler_prompts()
    wrapped = Float32Masks(model)
    for i, prompt in enumerate(prompts):
        out[f"sampler.prompt.{i}"] = prompt
    if version == "llada2":
        module = load_sampler(original, "llada2_sampler")
        sampler = module.LLaDA2Sampler(model=wrapped, tokenizer=TinyTokenizer())
        for name, kwargs in SAMPLER_LLADA2:
            for i, prompt in enumerate(prompts):
                res = sampler.sample([prompt], return_dict=True, **kwargs)
                out[f"sample.{name}.{i}.sequences"] = res.sequences[0]
                out[f"sample.{name}.{i}.nfe"] = torch.tensor(len(res.histories) - 1)
            # the sampler's own batch: equal-length prompts only (a batch of the first prompt and a variant)
            twin = prompts[0].clone()
            twin[0] = (twin[0] + 1) % 150
            res = sampler.sample([prompts[0], twin], **kwargs)
            out[f"sample.{name}.batch_equal.sequences"] = res
            out["sampler.twin"] = twin
    else:
        module = load_sampler(original, "llada21_sampler")
        sampler = module.LLaDA21Sampler(model=wrapped, tokenizer=TinyTokenizer())
        for name, kwargs in SAMPLER_LLADA21:
            for i, prompt in enumerate(prompts):
                res = sampler.sample([prompt], return_dict=True, **kwargs)
                histories = torch.stack([h[0] for h in res.histories])
                out[f"sample.{name}.{i}.sequences"] = res.sequences[0]
                out[f"sample.{name}.{i}.histories"] = histories
    return out


def write_fixture(args) -> None:
    from safetensors.torch import save_file

    out_root = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        transformers = load_original(work)
        from transformers.cache_utils import DynamicCache

        for version, original, config, target in (
            ("llada2", Path(args.original).resolve(), TINY_CONFIG, out_root),
            ("llada21", Path(args.original21).resolve(), TINY_CONFIG_21, out_root / "llada21"),
        ):
            sys.path.insert(0, str(original.parent))
            model = make_checkpoint(transformers, original, FILES[version], config, work / version, seed=0)
            copy_fixture(work / version, target)
            with torch.no_grad():
                tensors = golden_cases(model, DynamicCache)
                tensors |= sampler_cases(model, original, version)
            meta = {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "block_length": str(BLOCK),
                "mask_token_id": str(MASK_ID),
                "eos_token_id": str(EOS_ID),
                "samplers": json.dumps(SAMPLER_LLADA2 if version == "llada2" else SAMPLER_LLADA21),
            }
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(target / "golden.safetensors"), metadata=meta
            )
            print(f"wrote {target} ({len(tensors)} tensors)")


def check_student(args) -> None:
    original, student = Path(args.original).resolve(), Path(args.check_student)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        transformers = load_original(work)
        from transformers.cache_utils import DynamicCache

        checkpoint = work / "student"
        shutil.copytree(student, checkpoint)
        for name in FILES["llada2"]:
            shutil.copy(original / name, checkpoint / name)
        _common.check_student(transformers, checkpoint, student, lambda model: golden_cases(model, DynamicCache))


# ------------------------------------------------------------------------------------------ the project environment
def make_student(args) -> None:
    """Load the fixture with our class, change its weights (and expert biases), save it with our logits."""
    from transformers import DynamicCache

    from trl_t3d.models.llada2 import LLaDA2MoeModelLM

    _common.save_student(
        LLaDA2MoeModelLM.from_pretrained(args.out),
        randomize,
        lambda model: golden_cases(model, DynamicCache),
        args.make_student,
        keep=lambda key: key.endswith("logits") or ".router_logits." in key,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", help="LLaDA2.0's configuration/modeling/sampler .py files")
    parser.add_argument("--original21", help="LLaDA2.1's configuration/modeling/sampler .py files")
    parser.add_argument("--out", default=str(HERE / "llada2"), help="fixture directory")

    def write_fixtures(args):
        if not args.original21:
            parser.error("--original21 is required to write the fixtures")
        write_fixture(args)

    _common.run_mode(parser, "LLaDA2", write_fixtures, check_student, make_student)


if __name__ == "__main__":
    main()
