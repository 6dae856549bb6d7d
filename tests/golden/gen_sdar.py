"""Golden fixtures for `trl_t3d.models.sdar`, produced by SDAR's original modeling code.

SDAR's published code (vendored in Tyrion58/T3D `models/sdar/`) imports `flash_attn` at module level and
`transformers.utils.LossKwargs`, so it runs only on transformers 4.52. This script runs it there on a tiny random
config, with a small CPU stand-in for the two `flash_attn` functions it imports (`rms_norm_fn`, used by every RMSNorm,
and `flash_attn_func`, used only for single-token decoding with a cache, which no golden case exercises). The original
`.py` files are read from `--original` and copied into temporary checkpoint directories; they are never written to
`--out`.

Modes (the first and last run in the old environment, the middle one in the project venv):

    # 1. write the fixtures
    /work/venvs/tf452/bin/python tests/golden/gen_sdar.py --original /tmp/orig_sdar --out tests/golden/sdar
    # 2. save a student with OUR class (weights changed), with our logits on the golden inputs
    .venv/bin/python tests/golden/gen_sdar.py --make-student /tmp/sdar_student --out tests/golden/sdar
    # 3. load that student with the ORIGINAL code and compare its logits with ours
    /work/venvs/tf452/bin/python tests/golden/gen_sdar.py --original /tmp/orig_sdar --check-student /tmp/sdar_student

`--original` holds `configuration_sdar.py` and `modeling_sdar.py`, e.g. extracted with
`git -C <T3D mirror> show HEAD:models/sdar/modeling_sdar.py > /tmp/orig_sdar/modeling_sdar.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import _common  # tests/golden/_common.py: this directory is first on sys.path
import torch
from _common import build_original, copy_fixture, left_padding, positions, training_layout

ORIGINAL_FILES = ("configuration_sdar.py", "modeling_sdar.py")
AUTO_MAP = {
    "AutoConfig": "configuration_sdar.SDARConfig",
    "AutoModel": "modeling_sdar.SDARModel",
    "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
}
MASK_ID = 319  # the tiny vocabulary's last id plays `<|MASK|>`
BLOCK = 4

# A Qwen3/SDAR-style config.json at toy size: every key of the published SDAR configs, small dimensions. The head
# dimension (16) differs from hidden_size / num_attention_heads (8), as in SDAR-4B/8B; GQA with 2 key/value heads.
TINY_CONFIG = {
    "architectures": ["SDARForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": AUTO_MAP,
    "bos_token_id": 293,  # <|endoftext|> of the tiny tokenizer (trl_t3d.models.sdar.make_tiny_tokenizer)
    "eos_token_id": 295,  # <|im_end|>
    "fuse_cross_entropy": True,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "max_window_layers": 2,
    "model_type": "sdar",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 320,
}

# RoPE variants checked on the rotary module alone (cos/sin), so the native class's use of transformers 5's RoPE
# utilities is held to the original's conventions for every `rope_scaling` the original accepts.
ROPE_VARIANTS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0},
    "yarn_original_max": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "longrope": {
        "rope_type": "longrope",
        "factor": 2.0,
        "short_factor": [1.0 + 0.1 * i for i in range(8)],
        "long_factor": [2.0 + 0.2 * i for i in range(8)],
        "original_max_position_embeddings": 16,
    },
}
ROPE_MAX_POSITIONS = 32  # positions up to 80 go past it, which moves the dynamic and longrope variants

FLASH_ATTN_STANDIN = {
    "flash_attn/__init__.py": '''
        """CPU stand-in for the two flash_attn entry points SDAR's modeling code imports."""
        import torch


        def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
            """(B, Q, H, D) layout; `causal` aligns the mask bottom-right, as flash-attn >= 2.1 does."""
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            mask = None
            if causal:
                q_len, k_len = q.shape[-2], k.shape[-2]
                mask = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=softmax_scale, enable_gqa=True
            )
            return out.transpose(1, 2)


        def flash_attn_varlen_func(*args, **kwargs):
            raise NotImplementedError("not needed by the golden cases")
    ''',
    "flash_attn/bert_padding.py": """
        def _unused(*args, **kwargs):
            raise NotImplementedError("not needed by the golden cases")


        index_first_axis = pad_input = unpad_input = _unused
    """,
    "flash_attn/ops/__init__.py": "",
    "flash_attn/ops/triton/__init__.py": "",
    "flash_attn/ops/triton/layer_norm.py": '''
        import torch


        def rms_norm_fn(x, weight, bias=None, eps=1e-6, **kwargs):
            """flash-attn's Triton RMSNorm: fp32 math, weight applied in fp32, output in the input dtype."""
            x32 = x.float()
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
            if bias is not None:
                y = y + bias.float()
            return y.to(x.dtype)
    ''',
}


# --------------------------------------------------------------------------------------------- the old environment
def install_standins(root: Path) -> None:
    for rel, text in FLASH_ATTN_STANDIN.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    sys.path.insert(0, str(root))


def copy_original(original: Path, checkpoint: Path) -> None:
    for name in ORIGINAL_FILES:
        if not (original / name).is_file():
            raise SystemExit(f"--original {original} lacks {name}: extract SDAR's original files there first.")
        shutil.copy(original / name, checkpoint / name)


def block_of(index, prompt_length):
    """Block index of a position of `[prompt, completion]`: the completion starts block 0, the prompt counts back."""
    return (index - prompt_length) // BLOCK


def cached_step_mask(key_valid, start, end, prompt_length):
    """Rows `start:end` of the block-causal mask over keys `:end` (generate.py's decoding with a KV cache)."""
    blocks = block_of(torch.arange(end), prompt_length)
    allowed = (blocks[None, :] <= blocks[start:end, None])[None] & key_valid[:, None, :end].bool()
    return allowed[:, None]


def randomize(model, seed):
    """Weights big enough that attention is peaked (so mask mistakes show) and norms that are not all ones."""
    _common.randomize(model, seed, scale=0.25)


def golden_cases(model):
    """Inputs and the original code's fp32 outputs for every calling convention SDAR's callers use."""
    from transformers.cache_utils import DynamicCache

    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    out = {}

    def ids(*shape):
        return torch.randint(0, vocab - 1, shape, generator=gen)

    # (a) no mask: the original attends bidirectionally over the whole input (it builds no causal mask)
    x = ids(2, 10)
    labels = ids(2, 10)
    labels[0, :3] = -100
    res = model(input_ids=x, labels=labels, use_cache=False)
    out |= {"no_mask.input_ids": x, "no_mask.labels": labels, "no_mask.logits": res.logits, "no_mask.loss": res.loss}

    # (b) a 2D padding mask (left padding) with explicit position ids
    x = ids(2, 10)
    mask = left_padding([7, 10], 10)
    res = model(input_ids=x, attention_mask=mask, position_ids=positions(mask), use_cache=False)
    out |= {"padding_2d.input_ids": x, "padding_2d.attention_mask": mask, "padding_2d.logits": res.logits}

    # (c) T3D training layout [prompt, x_0, x_t] with a 4D block mask: int64 0/1 as T3D passes it, and bool
    x, allowed, pos = training_layout(ids, gen, MASK_ID, BLOCK)
    out |= {"block.input_ids": x, "block.position_ids": pos}
    for name, mask in (("block_int", allowed.long()), ("block_bool", allowed)):
        res = model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False)
        out |= {f"{name}.attention_mask": mask, f"{name}.logits": res.logits}

    # (d) the KV-cache path of SDAR's own generate.py: prefill with store_kv=True, denoise a block reading the cache
    # (store_kv=False), store the finished block, denoise the next one. Batch of two, one prompt left-padded.
    prompt_length = 8
    key_valid = torch.cat([left_padding([5, 8], prompt_length), torch.ones(2, 2 * BLOCK, dtype=torch.long)], dim=1)
    pos = positions(key_valid)
    seq = torch.cat([ids(2, prompt_length), torch.full((2, 2 * BLOCK), MASK_ID)], dim=1)
    seq[:, prompt_length + 1] = ids(2)  # one already-decoded token in the first block
    finished_block = ids(2, BLOCK)
    steps = [  # (name, start, end, store_kv, token ids)
        ("kv_prefill", 0, prompt_length, True, seq[:, :prompt_length]),
        ("kv_block0_step", prompt_length, prompt_length + BLOCK, False, seq[:, prompt_length : prompt_length + BLOCK]),
        ("kv_block0_store", prompt_length, prompt_length + BLOCK, True, finished_block),
        ("kv_block1_step", prompt_length + BLOCK, prompt_length + 2 * BLOCK, False, seq[:, prompt_length + BLOCK :]),
    ]
    cache = DynamicCache()
    out["kv.key_valid"] = key_valid
    for name, start, end, store, chunk in steps:
        mask = cached_step_mask(key_valid, start, end, prompt_length).long()
        res = model(
            input_ids=chunk,
            attention_mask=mask,
            position_ids=pos[:, start:end],
            past_key_values=cache,
            use_cache=True,
            store_kv=store,
        )
        out |= {f"{name}.input_ids": chunk, f"{name}.attention_mask": mask, f"{name}.position_ids": pos[:, start:end]}
        out[f"{name}.logits"] = res.logits
        out[f"{name}.cache_length"] = torch.tensor(cache.get_seq_length())
    return {k: v.detach().contiguous() for k, v in out.items()}


def rope_cases(modeling, config_cls):

    out = {}
    position_ids = torch.cat([torch.arange(24), torch.arange(56, 80)])[None]
    x = torch.zeros(1, dtype=torch.float32)
    for name, scaling in ROPE_VARIANTS.items():
        config = config_cls(
            **{k: v for k, v in TINY_CONFIG.items() if k not in ("auto_map", "architectures", "model_type")}
            | {"rope_scaling": json.loads(json.dumps(scaling)), "max_position_embeddings": ROPE_MAX_POSITIONS}
        )
        rotary = modeling.SDARRotaryEmbedding(config)
        short_cos, short_sin = rotary(x, position_ids[:, :24])  # dynamic/longrope: within the original length
        long_cos, long_sin = rotary(x, position_ids)  # then past it
        out |= {f"rope.{name}.short_cos": short_cos, f"rope.{name}.short_sin": short_sin}
        out |= {f"rope.{name}.long_cos": long_cos, f"rope.{name}.long_sin": long_sin}
    out["rope.position_ids"] = position_ids
    return out


def load_original(original: Path, work: Path):
    os.environ["HF_MODULES_CACHE"] = str(work / "hf_modules")
    install_standins(work / "standins")
    sys.path.insert(0, str(original.parent))
    import transformers

    if not transformers.__version__.startswith("4.52"):
        raise SystemExit(f"Run this mode with transformers 4.52 (SDAR's own), not {transformers.__version__}.")
    return transformers


def write_fixture(args) -> None:
    from safetensors.torch import save_file

    original, out = Path(args.original).resolve(), Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        transformers = load_original(original, work)
        variants = {"": {}, "untied": {"tie_word_embeddings": False}}
        for sub, overrides in variants.items():
            checkpoint = work / ("checkpoint" + sub)
            checkpoint.mkdir()
            copy_original(original, checkpoint)
            model = build_original(transformers, checkpoint, TINY_CONFIG | overrides, randomize, 0 if not sub else 1)
            target = out / sub if sub else out
            copy_fixture(checkpoint, target)
            with torch.no_grad():
                tensors = golden_cases(model)
                if sub:  # the untied variant proves loading; one case is enough
                    tensors = {k: v for k, v in tensors.items() if k.startswith("no_mask.")}
                else:
                    modeling = sys.modules[type(model).__module__]
                    tensors |= rope_cases(modeling, type(model.config))
            meta = {"transformers": transformers.__version__, "torch": torch.__version__, "block_length": str(BLOCK)}
            meta["mask_token_id"] = str(MASK_ID)
            if not sub:
                meta["rope_variants"] = json.dumps(ROPE_VARIANTS)
                meta["rope_max_position_embeddings"] = str(ROPE_MAX_POSITIONS)
            save_file(tensors, str(target / "golden.safetensors"), metadata=meta)
            print(f"wrote {target} ({len(tensors)} tensors)")


def check_student(args) -> None:
    original, student = Path(args.original).resolve(), Path(args.check_student)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        transformers = load_original(original, work)
        checkpoint = work / "student"
        shutil.copytree(student, checkpoint)
        copy_original(original, checkpoint)
        _common.check_student(transformers, checkpoint, student, golden_cases)


# ------------------------------------------------------------------------------------------ the project environment
def make_student(args) -> None:
    """Load the fixture with our class, change its weights, save it, and store our logits on the golden inputs."""
    from trl_t3d.models.sdar import SDARForCausalLM

    _common.save_student(SDARForCausalLM.from_pretrained(args.out), randomize, golden_cases, args.make_student)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", help="directory with SDAR's original configuration_sdar.py / modeling_sdar.py")
    parser.add_argument("--out", default=str(Path(__file__).parent / "sdar"), help="fixture directory")
    _common.run_mode(parser, "SDAR", write_fixture, check_student, make_student)


if __name__ == "__main__":
    main()
