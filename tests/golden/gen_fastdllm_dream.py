"""Golden fixtures for prefix / dual KV-cache decoding of Dream, made by Fast-dLLM's ORIGINAL Dream code.

Fast-dLLM (NVlabs/Fast-dLLM, `dream/model/`) ships a modified Dream (`modeling_dream.py`: a forward that takes a
prefix cache or, with `dual_cache=True`, a whole-sequence cache whose block entries are replaced in place) and
`generation_utils_block.py`, whose `DreamGenerationMixin.diffusion_generate` / `_sample` decode block by block with a
cache (its `eval.py` binds them to the model). This script runs them in a transformers-4 environment on a tiny random
Dream and records their tokens; `test_parity_with_fast_dllm_dream` in tests/test_kv_cache_decoding.py decodes the same
prompts with trl_t3d's native Dream class and `DiffusionKVCache`. The original files are never copied into this
repository: pass a local copy of Fast-dLLM's `dream/model/` directory:

    mkdir -p /tmp/fastdllm_dream && for f in configuration_dream.py modeling_dream.py generation_utils.py \\
        generation_utils_block.py; do git -C <Fast-dLLM clone> show HEAD:dream/model/$f > /tmp/fastdllm_dream/$f; done
    /work/venvs/tf457/bin/python tests/golden/gen_fastdllm_dream.py --original /tmp/fastdllm_dream

writes `tests/golden/fastdllm_dream/`: `config.json` (as the original config class saves it, with Dream's published
`auto_map`), `model.safetensors`, `golden.safetensors` (prompts, then the sequences of every case) and `cases.json`
(every argument of every call).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
import types

from _common import missing_files, spread_dream_weights, store_sequences, tiny_dream_config

ORIGINAL_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "generation_utils_block.py")
SEED = 0
EOS_ID, MASK_ID = 126, 127  # Dream's <|endoftext|> (pad/bos/eos) and <|mask|> roles in a tiny vocabulary
# The published Dream-v0 config.json keys, tiny sizes.
TINY_CONFIG = tiny_dream_config(vocab_size=128, rope_theta=10000.0, mask_id=MASK_ID, endoftext_id=EOS_ID)
# (name, prompt seed, prompt lengths, gen_length, block_length, steps, alg, threshold). Fast-dLLM decodes one prompt
# at a time (its padded path is not usable with a cache); prompts of different lengths let the test decode them as one
# left-padded batch. "steps = gen_length" is "one token per step" and "steps = gen_length / 2" two per step in the
# LLaDA sense, but Fast-dLLM's Dream commits with Dream's timestep schedule (see cases.json "notes"). Its `_sample`
# ignores the name of any alg other than confidence_threshold (always negative entropy), so maskgit_plus and entropy
# are both recorded. `steps` must be a multiple of the number of blocks even with confidence_threshold (unused there).
SETTINGS = (
    ("steps_1_per_step_entropy", 1, (10, 6), 16, 4, 16, "entropy", None),
    ("steps_2_per_step_maskgit_plus", 2, (7, 12), 16, 8, 8, "maskgit_plus", None),
    ("steps_uneven_entropy", 3, (9,), 12, 6, 8, "entropy", None),
    ("threshold_0.9", 4, (10, 5, 8), 16, 4, 4, "confidence_threshold", 0.9),
    ("threshold_0.9_block8", 5, (8, 11), 16, 8, 2, "confidence_threshold", 0.9),
)
MODES = {"prefix": False, "dual": True}  # Fast-dLLM's `dual_cache` argument


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="a copy of Fast-dLLM's dream/model/ directory")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastdllm_dream"))
    args = parser.parse_args()
    missing = missing_files(args.original, ORIGINAL_FILES)
    if missing:
        parser.error(f"--original {args.original} lacks {missing}")
    return args


def spread_weights(model, torch):
    """Weights of order one and a sharp output head, so that confidences spread over (0, 1) and a 0.9 threshold
    decides (the 0.02 init gives near-uniform predictions that no threshold passes)."""
    spread_dream_weights(model, SEED, scale=2.0, head_scale=12.0)
    with torch.no_grad():
        # A trained Dream never predicts the mask token (trl_t3d never proposes it); a zero row keeps its logit at 0,
        # below the best of the others, so the original code never "commits" a mask either.
        model.lm_head.weight[MASK_ID].zero_()


def load_block_decoder(original: str):
    """Fast-dLLM's generation_utils_block.py as a module (it imports only torch and transformers)."""
    spec = importlib.util.spec_from_file_location(
        "fastdllm_generation_utils_block", os.path.join(original, "generation_utils_block.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    args = parse_args()
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, __version__

    workdir = tempfile.mkdtemp(prefix="fastdllm_dream_")
    ckpt = os.path.join(workdir, "ckpt")
    os.makedirs(ckpt)
    for name in ORIGINAL_FILES:
        shutil.copy(os.path.join(args.original, name), ckpt)
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f, indent=2)
    config = AutoConfig.from_pretrained(ckpt, trust_remote_code=True)
    torch.manual_seed(SEED)
    model = AutoModel.from_config(config, trust_remote_code=True, torch_dtype=torch.float32).eval()
    spread_weights(model, torch)
    # As Fast-dLLM's dream/eval.py does with use_cache=True: the block decoder replaces the model's own.
    block = load_block_decoder(args.original)
    model.diffusion_generate = types.MethodType(block.DreamGenerationMixin.diffusion_generate, model)
    model._sample = types.MethodType(block.DreamGenerationMixin._sample, model)

    saved = os.path.join(workdir, "saved")
    model.save_pretrained(saved, safe_serialization=True)
    os.makedirs(args.out, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(saved, name), args.out)
    shipped = load_file(os.path.join(args.out, "model.safetensors"))
    state = model.state_dict()
    assert set(shipped) == set(state) and all(torch.equal(state[k], v) for k, v in shipped.items())

    generator = torch.Generator()
    tensors, cases = {}, []
    for name, prompt_seed, lengths, gen_length, block_length, steps, alg, threshold in SETTINGS:
        generator.manual_seed(SEED + prompt_seed)
        for row, length in enumerate(lengths):
            prompt = torch.randint(0, EOS_ID, (1, length), generator=generator)
            tensors[f"{name}/{row}/prompt"] = prompt.contiguous()
            for mode, dual_cache in MODES.items():
                generation_config = block.DreamGenerationConfig(
                    max_new_tokens=gen_length,
                    steps=steps,
                    alg=alg,
                    alg_temp=None,
                    temperature=0.0,
                    top_p=None,
                    top_k=None,
                    eps=1e-3,
                    mask_token_id=MASK_ID,
                    pad_token_id=EOS_ID,
                    eos_token_id=EOS_ID,
                    bos_token_id=EOS_ID,
                )
                with torch.no_grad():
                    sequences = model.diffusion_generate(
                        prompt,
                        generation_config=generation_config,
                        threshold=threshold,
                        block_length=block_length,
                        dual_cache=dual_cache,
                    )
                key = f"{name}/{row}/{mode}"
                store_sequences(tensors, key, sequences, MASK_ID)
                print(f"{key}: {sequences[0, length:].tolist()}")
        cases.append(
            {
                "name": name,
                "num_prompts": len(lengths),
                "prompt_lengths": list(lengths),
                "modes": list(MODES),
                "gen_length": gen_length,
                "block_length": block_length,
                "steps": steps,
                "alg": alg,
                "threshold": threshold,
                "eps": 1e-3,
                "temperature": 0.0,
            }
        )
    save_file(tensors, os.path.join(args.out, "golden.safetensors"))
    notes = [
        "Each block: one whole-sequence forward commits the block's FIRST position (greedy, whatever alg), then "
        "cached forwards of positions [block start, end of sequence) (prefix) or [block start, block end) (dual).",
        "confidence_threshold: each cached forward commits the most probable undecided position of the block and "
        "every one whose probability is >= threshold (trl_t3d: threshold_rule='fast_dllm').",
        "other algs: confidence is negative entropy whatever alg says (trl_t3d: remasking='entropy'); cached forward "
        "i = 1 .. steps_per_block - 1 commits int(n * (1 - s / t)) on linspace(1, eps, steps_per_block + 1), all "
        "that remain at the last (trl_t3d: schedule='dream' counts of steps 1 .. steps_per_block - 1).",
    ]
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(
            {
                "source": f"Fast-dLLM dream/model/generation_utils_block.py diffusion_generate (transformers "
                f"{__version__}, torch {torch.__version__})",
                "notes": notes,
                "mask_token_id": MASK_ID,
                "eos_token_id": EOS_ID,
                "cases": cases,
            },
            f,
            indent=2,
        )
        f.write("\n")
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {sorted(os.listdir(args.out))} to {args.out}")


if __name__ == "__main__":
    main()
