"""Golden fixtures for `trl_t3d.models.llada`, made by LLaDA's ORIGINAL code in its own environment.

Run with a transformers-4 python (LLaDA's remote code does not load on transformers 5), pointing `--original` at a
local copy of LLaDA's published `configuration_llada.py` and `modeling_llada.py` (e.g. from ZHZisZZ/dllm
`dllm/pipelines/llada/models/`); they are copied into a temporary checkpoint directory and never written to `--out`:

    /work/venvs/tf457/bin/python tests/golden/gen_llada.py --original /tmp/orig_llada --out tests/golden/llada

For each tiny config in `VARIANTS` (the main one mirrors the published dense 8B checkpoints; `gqa_tied` adds grouped
key/value heads and `weight_tying`) it writes, to `--out` (main) and `--out/<variant>`: `config.json` as the original
code saves it (`auto_map` included), `model.safetensors` and `golden.safetensors` (inputs and the original's fp32
logits for every case in `CASES`; the main fixture also holds the hidden states of case `a`).

`--check-student DIR` is the other direction: DIR is a model saved by our native class, with an
`expected_logits.safetensors` (`input_ids`, `attention_mask`, `logits`) written beside it by our class (without that
file, DIR must hold the golden weights unchanged and the main golden cases are used). The original `.py` files are
copied into a temporary copy of DIR, the original code loads it (no missing or unexpected keys allowed) and its fp32
logits must match within 1e-4.

One edit is made to the copied original files, and only when CUDA is absent: ZHZisZZ/dllm's `LLaDAModelLM.__init__`
hard-codes `init_device = "cuda"` (the published file says "cpu"); it becomes "cpu". Nothing else is touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

ORIGINAL_FILES = ("configuration_llada.py", "modeling_llada.py")
AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}
SEED = 0
TOLERANCE = 1e-4

# The tiny tokenizer of `trl_t3d.models.llada.make_tiny_tokenizer`: 288 byte-level BPE entries, then LLaDA's special
# tokens in their published order (<|endoftext|> is EOS and pad, <|mdm_mask|> the diffusion mask).
BPE_VOCAB_SIZE = 288
STARTOFTEXT_ID, ENDOFTEXT_ID, MDM_MASK_ID, START_HEADER_ID, END_HEADER_ID, EOT_ID = range(BPE_VOCAB_SIZE, 294)

# Every key of GSAI-ML/LLaDA-8B-Instruct's config.json, with tiny sizes and the tiny tokenizer's ids.
TINY_CONFIG = {
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": AUTO_MAP,
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "d_model": 32,
    "embedding_dropout": 0.0,
    "embedding_size": 320,
    "eos_token_id": ENDOFTEXT_ID,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mask_token_id": MDM_MASK_ID,
    "max_sequence_length": 4096,
    "mlp_hidden_size": 96,
    "mlp_ratio": 4,
    "model_type": "llada",
    "multi_query_attention": None,
    "n_heads": 4,
    "n_kv_heads": 4,
    "n_layers": 2,
    "pad_token_id": ENDOFTEXT_ID,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "use_cache": False,
    "vocab_size": 320,
    "weight_tying": False,
}
VARIANTS = {
    "": TINY_CONFIG,
    "gqa_tied": {**TINY_CONFIG, "n_kv_heads": 2, "mlp_hidden_size": 64, "weight_tying": True, "rope_theta": 10000.0},
}
BATCH, LENGTH, LEFT_PAD = 2, 12, 3
# a: no mask; b: row 0 left-padded by LEFT_PAD (pad ids under a 2D mask); c: b plus a boolean 4D `attention_bias`
# (block-causal, blocks of 4), which the original merges with the padding mask.
CASES = ("a", "b", "c")


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_checkpoint_dir(original: str, work: str, name: str) -> str:
    """A Hub-layout directory holding copies of the original `.py` files (patched only as the docstring says)."""
    import torch

    path = os.path.join(work, name)
    os.makedirs(path, exist_ok=True)
    for filename in ORIGINAL_FILES:
        source = os.path.join(original, filename)
        if not os.path.isfile(source):
            raise SystemExit(f"--original {original} has no {filename}: pass the directory holding LLaDA's files.")
        with open(source) as f:
            code = f.read()
        if filename == "modeling_llada.py" and not torch.cuda.is_available():
            code = code.replace('model_config.init_device = "cuda"', 'model_config.init_device = "cpu"')
        with open(os.path.join(path, filename), "w") as f:
            f.write(code)
    return path


def randomize(model, seed: int) -> None:
    """Weights that make every parameter matter: norms around 1, projections ~ 1/sqrt(fan_in), embeddings ~ N(0, 1)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight") or "ln_f" in name:
                param.copy_(1.0 + 0.3 * noise)
            elif "wte" in name:
                param.copy_(noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)


def make_inputs(config: dict, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, BPE_VOCAB_SIZE, (BATCH, LENGTH), generator=generator)
    ids[0, [5, 7]] = config["mask_token_id"]  # LLaDA inputs are partly masked
    ids[1, -4:] = config["mask_token_id"]
    padded = ids.clone()
    padded[0, :LEFT_PAD] = config["pad_token_id"]
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[0, :LEFT_PAD] = 0
    block = torch.arange(LENGTH) // 4
    bias = (block[:, None] >= block[None, :])[None, None]  # (1, 1, T, T), True = may attend
    return {
        "a.input_ids": ids,
        "b.input_ids": padded,
        "b.attention_mask": mask,
        "c.input_ids": padded,
        "c.attention_mask": mask,
        "c.attention_bias": bias,
    }


def case_kwargs(tensors: dict, case: str) -> dict:
    kwargs = {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith(f"{case}.")}
    kwargs.pop("logits", None)
    kwargs.pop("hidden_states", None)
    return kwargs


def generate(original: str, out: str, work: str) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    for variant, tiny_config in VARIANTS.items():
        checkpoint = make_checkpoint_dir(original, work, f"checkpoint_{variant or 'main'}")
        with open(os.path.join(checkpoint, "config.json"), "w") as f:
            json.dump(tiny_config, f, indent=2)
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
        model = AutoModel.from_config(config, trust_remote_code=True, torch_dtype=torch.float32)
        randomize(model, SEED)
        model.eval()
        target = os.path.join(out, variant) if variant else out
        os.makedirs(target, exist_ok=True)
        saved = os.path.join(work, f"saved_{variant or 'main'}")
        model.save_pretrained(saved, safe_serialization=True)
        for filename in ("config.json", "model.safetensors"):
            shutil.copyfile(os.path.join(saved, filename), os.path.join(target, filename))

        tensors = make_inputs(tiny_config, SEED)
        with torch.no_grad():
            for case in CASES:
                output = model(**case_kwargs(tensors, case), use_cache=False, output_hidden_states=not variant)
                tensors[f"{case}.logits"] = output.logits.float().contiguous()
                if case == "a" and not variant:
                    tensors["a.hidden_states"] = torch.stack(output.hidden_states).contiguous()
        metadata = {
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "original_sha256": json.dumps({f: sha256(os.path.join(original, f)) for f in ORIGINAL_FILES}),
            "cases": ",".join(CASES),
            "seed": str(SEED),
        }
        save_file(
            {k: v.clone().contiguous() for k, v in tensors.items()},
            os.path.join(target, "golden.safetensors"),
            metadata,
        )
        print(f"wrote {target}: cases {', '.join(CASES)}")


def check_student(original: str, student: str, out: str, work: str) -> float:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    checkpoint = make_checkpoint_dir(original, work, "student")
    for filename in os.listdir(student):
        if filename not in ORIGINAL_FILES and os.path.isfile(os.path.join(student, filename)):
            shutil.copyfile(os.path.join(student, filename), os.path.join(checkpoint, filename))
    with open(os.path.join(checkpoint, "config.json")) as f:
        auto_map = json.load(f).get("auto_map")
    if auto_map != AUTO_MAP:
        raise SystemExit(f"{student}/config.json has auto_map {auto_map}, not the published {AUTO_MAP}.")
    model, info = AutoModel.from_pretrained(
        checkpoint, trust_remote_code=True, torch_dtype=torch.float32, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"the original code loads {student} with problems: {bad}")
    model.eval()
    expected_path = os.path.join(student, "expected_logits.safetensors")
    if os.path.isfile(expected_path):
        expected = load_file(expected_path)
        runs = [
            ({"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}, expected["logits"])
        ]
    else:
        golden = load_file(os.path.join(out, "golden.safetensors"))
        runs = [(case_kwargs(golden, case), golden[f"{case}.logits"]) for case in CASES]
    worst = 0.0
    with torch.no_grad():
        for kwargs, logits in runs:
            got = model(**kwargs, use_cache=False).logits.float()
            worst = max(worst, (got - logits).abs().max().item())
    print(f"original code on {student}: max |logits - expected| = {worst:.3g} over {len(runs)} input(s)")
    if worst > TOLERANCE:
        raise SystemExit(f"FAILED: {worst:.3g} > {TOLERANCE}")
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="directory holding LLaDA's original .py files")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "llada"))
    parser.add_argument("--check-student", metavar="DIR", help="a directory saved by trl_t3d's native class")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        os.environ["HF_MODULES_CACHE"] = os.path.join(work, "modules")  # remote code stays in the temp dir
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        sys.path.insert(0, os.environ["HF_MODULES_CACHE"])
        if args.check_student:
            check_student(args.original, args.check_student, args.out, work)
        else:
            generate(args.original, args.out, work)


if __name__ == "__main__":
    main()
