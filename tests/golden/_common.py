"""Helpers shared by the golden generators (`gen_<family>.py`) and, for the Dream RoPE variants, by the tests.

The generators run as scripts (`python tests/golden/gen_sdar.py ...`), so this directory is first on `sys.path` and
they import this module as `_common`. It must run in every environment they run in: the old transformers-4 ones (the
original code) and the project venv (our classes), so it imports only torch, safetensors and the standard library, and
torch only inside the functions (gen_dream.py and the Fast-dLLM scripts import it after their own setup).
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------------------- Dream
DREAM_AUTO_MAP = {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}

# RoPE variants whose cos/sin tables the original Dream computes (the published checkpoints use `rope_scaling: null`);
# gen_dream.py records them, tests/test_native_dream.py checks the native class against them.
DREAM_ROPE_VARIANTS = {
    "default": None,
    "linear": {"type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
}


def tiny_dream_config(vocab_size: int, rope_theta: float, mask_id: int, endoftext_id: int) -> dict:
    """Published Dream-v0 config.json keys with tiny sizes (GQA kept: 4 query heads share 2 key/value heads);
    `endoftext_id` is pad, bos and eos, as Dream's <|endoftext|>."""
    return {
        "architectures": ["DreamModel"],
        "auto_map": DREAM_AUTO_MAP,
        "model_type": "Dream",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 128,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-06,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 28,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "float32",
        "mask_token_id": mask_id,
        "pad_token_id": endoftext_id,
        "bos_token_id": endoftext_id,
        "eos_token_id": endoftext_id,
    }


def spread_dream_weights(model, seed: int, scale: float = 1.0, head_scale: float | None = None) -> None:
    """Dream weights of order one (the 0.02 init gives near-uniform logits): norms 1 + 0.2 noise, biases 0.2 noise,
    the other weights `scale` noise / sqrt(fan-in), and with `head_scale` the output head `head_scale` times that."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            elif head_scale is not None and name == "lm_head.weight":
                param.copy_(head_scale * noise / param.shape[-1] ** 0.5)
            else:
                param.copy_(scale * noise / param.shape[-1] ** 0.5)


def missing_files(directory: str, names) -> list[str]:
    """The `names` (paths relative to `directory`) that are not files there."""
    import os

    return [name for name in names if not os.path.isfile(os.path.join(directory, name))]


def store_sequences(tensors: dict, key: str, sequences, mask_id: int) -> None:
    """`tensors[<key>/sequences]` of an original decoder's output, which must not keep a mask token."""
    if bool((sequences == mask_id).any()):
        raise RuntimeError(f"{key} left a mask token in its output")
    tensors[f"{key}/sequences"] = sequences.contiguous()


# ------------------------------------------------------------------------------ golden inputs (SDAR, LLaDA2, MoE)
def left_padding(lengths, total):
    """(len(lengths), total) 0/1 mask, row i left-padded to hold `lengths[i]` real tokens."""
    import torch

    return torch.stack([torch.arange(total) >= total - n for n in lengths]).long()


def positions(valid):
    """Position ids counting the valid (1) entries of each row from 0; pads take 0."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def training_mask(prompt_valid, length, block):
    """T3D's `[prompt, x_0, x_t]` mask, True = visible: x_t block b sees the prompt, x_0 blocks < b and itself.

    Prompt and x_0 are block-causal (blocks of `block`, aligned on the completion: it starts block 0, the prompt counts
    back); pad keys are hidden; a row left with no visible key sees itself (as T3D's `process_pad` does, so no row is
    fully masked).
    """
    import torch

    batch, prompt_length = prompt_valid.shape
    n = prompt_length + 2 * length
    ctx_blocks = (torch.arange(prompt_length + length) - prompt_length).div(block, rounding_mode="floor")
    noisy_blocks = torch.arange(length) // block
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[: prompt_length + length, : prompt_length + length] = ctx_blocks[None, :] <= ctx_blocks[:, None]
    allowed[prompt_length + length :, : prompt_length + length] = ctx_blocks[None, :] < noisy_blocks[:, None]
    allowed[prompt_length + length :, prompt_length + length :] = noisy_blocks[None, :] == noisy_blocks[:, None]
    key_valid = torch.cat([prompt_valid.bool(), torch.ones(batch, 2 * length, dtype=torch.bool)], dim=1)
    allowed = allowed[None] & key_valid[:, None, :]
    rows, queries = (~allowed.any(-1)).nonzero(as_tuple=True)
    allowed[rows, queries, queries] = True
    return allowed[:, None]


def training_layout(ids, gen, mask_id: int, block: int):
    """The T3D training layout `[prompt, x_0, x_t]` of a golden case: two prompts of 4 and 6 tokens left-padded to 6, 8
    completion tokens, x_t masked at random. `ids(*shape)` draws token ids; returns (input ids, bool mask, positions)."""
    import torch

    prompt_valid = left_padding([4, 6], 6)
    length = 8
    prompt, clean = ids(2, 6), ids(2, length)
    noisy = torch.where(torch.rand(2, length, generator=gen) < 0.5, torch.full_like(clean, mask_id), clean)
    x = torch.cat([prompt, clean, noisy], dim=1)
    allowed = training_mask(prompt_valid, length, block)
    ctx_positions = positions(torch.cat([prompt_valid, torch.ones(2, length, dtype=torch.long)], dim=1))
    pos = torch.cat([ctx_positions, ctx_positions[:, 6:]], dim=1)
    return x, allowed, pos


def prefill_then_forward(model, x, mask, pos, cache, split: int):
    """Store the keys of positions `:split` of `x` in `cache`, then return the forward of `split:` reading them (`mask`
    a (1, 1, T, T) mask over the whole of `x`, `pos` its position ids)."""
    model(
        input_ids=x[:, :split],
        attention_mask=mask[:, :, :split, :split],
        position_ids=pos[:, :split],
        past_key_values=cache,
        use_cache=True,
    )
    return model(
        input_ids=x[:, split:],
        attention_mask=mask[:, :, split:, :],
        position_ids=pos[:, split:],
        past_key_values=cache,
        use_cache=True,
    )


# --------------------------------------------------------------------------- fixtures (the original code, old env)
def randomize(model, seed: int, scale: float, expert_bias_scale: float | None = None) -> None:
    """Weights of `scale` times a standard normal (big enough that attention and routing are peaked, so mask or
    routing mistakes show), norms not all ones, and with `expert_bias_scale` a non-zero MoE `expert_bias`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else scale * noise)
        if expert_bias_scale is not None:
            for name, buf in model.named_buffers():
                if name.endswith("expert_bias"):
                    buf.copy_(expert_bias_scale * torch.randn(buf.shape, generator=gen))


def build_original(transformers, checkpoint, config: dict, randomize, seed: int):
    """The original model of `checkpoint` (a directory holding the original `.py` files) with `config`: built under
    torch seed 0, `randomize(model, seed)`, saved there and reloaded, so the fixture is what the original code reads."""
    import json

    import torch

    (checkpoint / "config.json").write_text(json.dumps(config, indent=2))
    cfg = transformers.AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    randomize(model, seed)
    model.save_pretrained(checkpoint)
    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()


def copy_fixture(checkpoint, target) -> None:
    """The fixture's `config.json` and weights from `checkpoint` into `target` (never the original `.py` files)."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint / name, target / name)


# ------------------------------------------------------------------------------- students (both directions)
def save_student(model, randomize, golden_cases, directory: str, keep=lambda key: key.endswith("logits")) -> None:
    """Project env: change the weights of `model` (our class, loaded from the fixture), save it in `directory` with
    our outputs of `golden_cases(model)` whose keys `keep` accepts (`student_logits.safetensors`)."""
    import torch
    from safetensors.torch import save_file

    randomize(model, seed=7)
    model.save_pretrained(directory)
    with torch.no_grad():
        cases = golden_cases(model.eval())
    kept = {k: v for k, v in cases.items() if keep(k)}
    save_file(kept, f"{directory}/student_logits.safetensors")
    print(f"wrote {directory} with our outputs for {len(kept)} cases")


def check_student(transformers, checkpoint, student, golden_cases) -> None:
    """Old env: load `checkpoint` (the student with the original `.py` files beside it) with the original code, which
    must load every tensor, and compare `golden_cases(model)` with the outputs our class saved in `student`."""
    import torch
    from safetensors.torch import load_file

    expected = load_file(str(student / "student_logits.safetensors"))
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, trust_remote_code=True, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"the original code did not load the student cleanly: {bad}")
    with torch.no_grad():
        got = golden_cases(model.eval())
    worst = 0.0
    for key, want in expected.items():
        delta = (got[key].float() - want.float()).abs().max().item()
        worst = max(worst, delta)
        print(f"{key}: max |delta| = {delta:.3g}")
    print(f"student {student}: the original code reproduces our logits, worst max |delta| = {worst:.3g}")
    if worst > 1e-4:
        raise SystemExit("MISMATCH")


def run_mode(parser, family: str, write_fixture, check_student, make_student) -> None:
    """Add `--check-student` / `--make-student` to `parser` (which has `--original`), parse, run the mode asked for."""
    parser.add_argument("--check-student", help=f"a checkpoint saved by trl_t3d's native {family} class (old env)")
    parser.add_argument("--make-student", help="where to save a student made with our class (project env)")
    args = parser.parse_args()
    if args.make_student:
        make_student(args)
    elif not args.original:
        parser.error("--original is required to write the fixture or to check a student")
    elif args.check_student:
        check_student(args)
    else:
        write_fixture(args)


# ---------------------------------------------------------------- from the tests (project env): the round trip
def needs_original(variable: str, family: str):
    """pytest's skip marker for a test that needs `variable` (a directory of `family`'s original .py files) and
    TRL_T3D_TF4_PYTHON (a python with transformers 4.57)."""
    import os

    import pytest

    return pytest.mark.skipif(
        not (os.environ.get(variable) and os.environ.get("TRL_T3D_TF4_PYTHON")),
        reason=f"set {variable} (dir of {family}'s original .py files) and TRL_T3D_TF4_PYTHON (a python with "
        "transformers 4.57) to check that the original code loads our saved student",
    )


def check_student_round_trip(script: str, variable: str, student) -> None:
    """Save a student with our class (`<script> --make-student`, this python), then load it with the original code
    (`--check-student`, TRL_T3D_TF4_PYTHON with the files of $`variable`), which must reproduce our outputs."""
    import os
    import subprocess
    import sys

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    made = subprocess.run([sys.executable, path, "--make-student", str(student)], capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    command = [os.environ["TRL_T3D_TF4_PYTHON"], path, "--original", os.environ[variable]]
    result = subprocess.run([*command, "--check-student", str(student)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout, file=sys.stderr)
