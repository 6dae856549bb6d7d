"""Golden fixtures for `trl_t3d.models.dream`, made by Dream's ORIGINAL code in its own environment.

Run with a transformers-4 python (Dream's remote code does not load on transformers 5), pointing `--original` at a
local copy of Dream's published files (`configuration_dream.py`, `modeling_dream.py`, `generation_utils.py`,
`tokenization_dream.py`, e.g. from ZHZisZZ/dllm `dllm/pipelines/dream/models/`); they are copied into a temporary
checkpoint directory and never written to `--out`:

    /work/venvs/tf457/bin/python tests/golden/gen_dream.py --original /tmp/orig_dream --out tests/golden/dream

writes `config.json` (as the original code saves it, `auto_map` included), `generation_config.json` (the published
keys; Dream's own `from_pretrained` requires the file), `model.safetensors`, `golden.safetensors` (inputs and the
original's fp32 logits for every case of `forward_cases`, RoPE tables, `diffusion_generate` outputs),
`generate_cases.json` (every argument of those `diffusion_generate` calls), `tokenizer/` (a tiny tokenizer in the
published layout, checked by the original `DreamTokenizer`) and `tokenizer_cases.json` (its encodings).

`--check-student DIR` is the other direction: it loads a directory saved by our native class with the ORIGINAL code
(the original `.py` files are copied into a temporary copy of it), checks every tensor loads as saved, and compares
its logits on the golden inputs with the golden ones, or with `--expected FILE` (our class's logits for a trained
student).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from _common import DREAM_AUTO_MAP, DREAM_ROPE_VARIANTS, missing_files, spread_dream_weights, tiny_dream_config

ORIGINAL_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py")
AUTO_MAP = DREAM_AUTO_MAP
SEED = 0

# The tiny tokenizer: a byte-level BPE of BPE_VOCAB_SIZE entries, then Dream's special tokens in the published order
# (<|endoftext|> is pad/eos, <|im_start|>/<|im_end|> frame chat turns, <|mask|> is the diffusion mask).
BPE_VOCAB_SIZE = 300
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>")
ENDOFTEXT_ID, IM_START_ID, IM_END_ID, BEGINOFTEXT_ID, MASK_ID = range(BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + 5)

# The published Dream-v0 config.json keys, tiny sizes.
TINY_CONFIG = tiny_dream_config(vocab_size=320, rope_theta=1000000.0, mask_id=MASK_ID, endoftext_id=ENDOFTEXT_ID)

# Published generation_config.json keys (Dream's own `from_pretrained` requires the file), tiny ids.
GENERATION_CONFIG = {
    "_from_model_config": True,
    "alg": "origin",
    "alg_temp": None,
    "bos_token_id": ENDOFTEXT_ID,
    "eos_token_id": ENDOFTEXT_ID,
    "eps": 0.001,
    "mask_token_id": None,
    "output_history": False,
    "pad_token_id": ENDOFTEXT_ID,
    "steps": 512,
    "temperature": 0.0,
    "top_k": None,
    "top_p": None,
}

ROPE_VARIANTS = DREAM_ROPE_VARIANTS  # their cos/sin tables (the published checkpoints use `rope_scaling: null`)

# diffusion_generate calls (greedy) recorded for the native decoder (issue 11).
GENERATE_STEPS = (4, 8)
GENERATE_ALGS = ("maskgit_plus", "topk_margin", "entropy")
MAX_NEW_TOKENS = 8

TOKENIZER_TEXTS = (
    "Hello world",
    " Hello world",
    "The answer is 42.\n\nNext line:\tdone",
    "naïve café — ünïcödé",
    "x = [1, 2, 3]  # it's a list",
    "<|im_start|>user\nhi<|im_end|>\n<|mask|><|mask|><|endoftext|>",
)
TOKENIZER_MESSAGES = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ],
]
# A Qwen-style ChatML template (Dream-Instruct's format: a default system turn, <|im_start|>role ... <|im_end|>).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOKENIZER_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello world! What is 2 + 3? The answer is 5. "
    "def add(x, y):\n    return x + y\n\nprint(add(2, 3))\n"
    "A diffusion language model unmasks tokens in parallel; the answer is the same in every order. "
    "Name a colour: blue, red, green. Another? Yellow. It's a list of numbers 1 2 3 4 5 6 7 8 9 10."
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="directory holding Dream's original .py files")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "dream"))
    parser.add_argument("--check-student", metavar="DIR", help="a directory saved by trl_t3d's native DreamModel")
    parser.add_argument(
        "--expected",
        metavar="FILE",
        help="with --check-student: a safetensors file of '<case>.logits' our class gave for that student on the "
        "golden inputs (default: the golden logits, for a student saved from the golden weights unchanged)",
    )
    args = parser.parse_args()
    missing = missing_files(args.original, ORIGINAL_FILES)
    if missing:
        parser.error(f"--original {args.original} lacks {missing}")
    return args


def checkpoint_with_code(source_dir: str | None, original: str, workdir: str, config: dict | None = None) -> str:
    """A checkpoint directory with the original .py files beside the config (and weights, when copied)."""
    path = tempfile.mkdtemp(dir=workdir)
    if source_dir is not None:
        for name in os.listdir(source_dir):
            if not name.endswith(".py") and os.path.isfile(os.path.join(source_dir, name)):
                shutil.copy(os.path.join(source_dir, name), path)
    for name in ORIGINAL_FILES:
        shutil.copy(os.path.join(original, name), path)
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return path


def spread_weights(model, torch):
    """Weights of order one (the 0.02 init gives near-uniform logits, which would hide mismatches)."""
    spread_dream_weights(model, SEED)


def forward_cases(torch, config):
    """Inputs of every golden forward case; each is a dict of tensors (plus 'attention_mask_str' for "full")."""
    generator = torch.Generator().manual_seed(SEED + 1)
    batch, length, pad = 2, 12, 3
    ids = torch.randint(0, BPE_VOCAB_SIZE, (batch, length), generator=generator)
    ids[1, 5] = MASK_ID
    ids[0, 7:] = MASK_ID
    padded = ids.clone()
    padded[0, :pad] = config["pad_token_id"]
    valid = torch.ones(batch, length, dtype=torch.long)
    valid[0, :pad] = 0
    key_mask = valid.bool()[:, None, None, :].expand(-1, 1, length, -1).contiguous()  # as trl_t3d's DreamAdapter
    cumulative_positions = (valid.cumsum(-1) - 1).clamp(min=0)
    pairwise = valid.bool()[:, None, :, None] & valid.bool()[:, None, None, :]  # as Dream's diffusion_generate
    generate_positions = (valid.cumsum(-1) - 1).masked_fill(valid == 0, 1)
    labels = ids.clone()
    labels[0, :4] = -100
    return {
        "no_mask": {"input_ids": ids},
        "key_mask_4d": {"input_ids": padded, "attention_mask": key_mask, "position_ids": cumulative_positions},
        "full": {"input_ids": ids, "attention_mask_str": "full"},
        "padding_mask_2d": {"input_ids": padded, "attention_mask": valid},
        "pairwise_4d_generate_positions": {
            "input_ids": padded,
            "attention_mask": pairwise,
            "position_ids": generate_positions,
        },
        "all_ones_2d": {"input_ids": ids, "attention_mask": torch.ones(batch, length, dtype=torch.long)},
        "labels": {"input_ids": ids, "labels": labels},
    }


def run_case(model, case: dict):
    kwargs = {k: v for k, v in case.items() if k != "attention_mask_str"}
    if "attention_mask_str" in case:
        kwargs["attention_mask"] = case["attention_mask_str"]
    return model(**kwargs, use_cache=False)


def rope_tables(torch, modeling, config_class):
    tables = {}
    positions = torch.arange(40)[None]  # beyond the 32 original positions of the scaled variants
    long_positions = torch.arange(200)[None]  # beyond max_position_embeddings (128): dynamic NTK rescales
    for name, scaling in ROPE_VARIANTS.items():
        config = config_class(**{**TINY_CONFIG, "rope_scaling": None if scaling is None else dict(scaling)})
        rotary = modeling.DreamRotaryEmbedding(config=config)
        probe = torch.zeros(1, dtype=torch.float32)
        cos, sin = rotary(probe, positions)
        tables[f"rope.{name}.cos"], tables[f"rope.{name}.sin"] = cos, sin
        if name in ("default", "dynamic"):
            cos, sin = rotary(probe, long_positions)
            tables[f"rope.{name}.long.cos"], tables[f"rope.{name}.long.sin"] = cos, sin
    return tables


def generate_cases(torch, model, config):
    generation_config_class = sys.modules[type(model).__module__].DreamGenerationConfig
    generator = torch.Generator().manual_seed(SEED + 2)
    prompt = torch.randint(0, BPE_VOCAB_SIZE, (1, 6), generator=generator)
    batch_prompt = torch.randint(0, BPE_VOCAB_SIZE, (2, 6), generator=generator)
    batch_prompt[0, :2] = config["pad_token_id"]
    batch_mask = torch.ones(2, 6, dtype=torch.long)
    batch_mask[0, :2] = 0
    tensors = {"generate.prompt": prompt, "generate.batch_prompt": batch_prompt, "generate.batch_mask": batch_mask}
    records = []
    for batched in (False, True):
        for steps in GENERATE_STEPS:
            for alg in GENERATE_ALGS:
                name = f"{'batch' if batched else 'single'}.{alg}.steps{steps}"
                kwargs = {
                    "max_new_tokens": MAX_NEW_TOKENS,
                    "steps": steps,
                    "temperature": 0.0,
                    "top_p": None,
                    "top_k": None,
                    "alg": alg,
                    "alg_temp": 0.0,
                    "eps": 1e-3,
                    "mask_token_id": config["mask_token_id"],
                    "pad_token_id": config["pad_token_id"],
                    "eos_token_id": config["eos_token_id"],
                    "output_history": True,
                    "return_dict": True,
                }
                inputs = batch_prompt if batched else prompt
                # An explicit generation config: this generation_utils.py renamed `return_dict_in_generate`, which
                # transformers 4.57's `from_model_config` (the path taken without one) still reads.
                generation_config = generation_config_class(**kwargs)
                call = {"attention_mask": batch_mask} if batched else {}
                out = model.diffusion_generate(inputs, generation_config=generation_config, **call)
                tensors[f"generate.{name}.sequences"] = out.sequences
                tensors[f"generate.{name}.history"] = torch.stack(out.history)  # [steps, batch, length]
                records.append(
                    {
                        "name": name,
                        "input_ids": "generate.batch_prompt" if batched else "generate.prompt",
                        "attention_mask": "generate.batch_mask" if batched else None,
                        "generation_config": kwargs,
                        "sequences": f"generate.{name}.sequences",
                        "history": f"generate.{name}.history",
                    }
                )
    return tensors, records


def make_tokenizer(workdir: str, ckpt: str, out_dir: str):
    """A tiny tokenizer in Dream's published layout, checked and encoded by the ORIGINAL `DreamTokenizer`.

    The layout is the Hub repo's: `vocab.json` + `merges.txt` (a byte-level BPE trained here on a few sentences),
    `tokenizer_config.json` naming the remote-code `DreamTokenizer` (with `auto_map`, the added special tokens and
    the chat template) and `special_tokens_map.json`. The original `.py` file is not written to `--out`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, __version__

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([TOKENIZER_CORPUS] * 4, trainer=trainer)
    tok_dir = os.path.join(workdir, "tokenizer")
    os.makedirs(tok_dir)
    bpe.model.save(tok_dir)  # vocab.json + merges.txt
    with open(os.path.join(tok_dir, "vocab.json")) as f:
        assert len(json.load(f)) == BPE_VOCAB_SIZE

    def token(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    ids = range(BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + len(SPECIAL_TOKENS))
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {**token(t), "special": True} for i, t in zip(ids, SPECIAL_TOKENS)},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "mask_token": "<|mask|>",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "DreamTokenizer",
        "unk_token": None,
    }
    special_tokens_map = {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": token("<|beginoftext|>"),
        "eos_token": token("<|endoftext|>"),
        "mask_token": token("<|mask|>"),
        "pad_token": token("<|endoftext|>"),
    }
    for name, content in (
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", special_tokens_map),
    ):
        with open(os.path.join(tok_dir, name), "w") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
            f.write("\n")
    target = os.path.join(out_dir, "tokenizer")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(tok_dir, target)

    # The original class reads the shipped files (its .py beside them only in the temporary copy).
    with_code = os.path.join(workdir, "tokenizer_with_code")
    shutil.copytree(tok_dir, with_code)
    for name in ("tokenization_dream.py", "configuration_dream.py"):
        shutil.copy(os.path.join(ckpt, name), with_code)
    tokenizer = AutoTokenizer.from_pretrained(with_code, trust_remote_code=True)
    assert type(tokenizer).__name__ == "DreamTokenizer", type(tokenizer)
    for i, t in zip(ids, SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(t) == i, (t, tokenizer.convert_tokens_to_ids(t))
    cases = {
        "source": f"Dream's original DreamTokenizer (tokenization_dream.py, transformers {__version__}) on tokenizer/",
        "special_tokens": {
            name: {"token": getattr(tokenizer, name), "id": getattr(tokenizer, f"{name}_id")}
            for name in ("eos_token", "pad_token", "bos_token", "mask_token", "unk_token")
        },
        "added_tokens": {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
        "len": len(tokenizer),
        "encode": [{"text": t, "input_ids": tokenizer(t)["input_ids"]} for t in TOKENIZER_TEXTS],
        "decode": [
            {"input_ids": ids, "text": tokenizer.decode(ids), "skip_special_tokens": tokenizer.decode(ids, True)}
            for ids in (tokenizer(t)["input_ids"] for t in TOKENIZER_TEXTS)
        ],
        "chat": [
            {
                "messages": m,
                "text": tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                "input_ids": tokenizer.apply_chat_template(m, tokenize=True, add_generation_prompt=True),
            }
            for m in TOKENIZER_MESSAGES
        ],
    }
    with open(os.path.join(out_dir, "tokenizer_cases.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")


def generate(args, workdir: str):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, __version__

    ckpt = checkpoint_with_code(None, args.original, workdir, TINY_CONFIG)
    config = AutoConfig.from_pretrained(ckpt, trust_remote_code=True)
    torch.manual_seed(SEED)
    model = AutoModel.from_config(config, trust_remote_code=True, torch_dtype=torch.float32).eval()
    spread_weights(model, torch)
    saved = os.path.join(workdir, "saved")
    model.save_pretrained(saved, safe_serialization=True)

    os.makedirs(args.out, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(saved, name), args.out)
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
        f.write("\n")
    # Reload from what we ship, so the golden logits come from exactly the committed weights.
    model = AutoModel.from_pretrained(
        checkpoint_with_code(args.out, args.original, workdir), trust_remote_code=True, torch_dtype=torch.float32
    ).eval()
    shipped = load_file(os.path.join(args.out, "model.safetensors"))
    state = model.state_dict()
    assert set(shipped) == set(state) and all(torch.equal(state[k], v) for k, v in shipped.items())

    tensors = {}
    with torch.no_grad():
        for name, case in forward_cases(torch, TINY_CONFIG).items():
            for key, value in case.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}.{key}"] = value.contiguous()
            out = run_case(model, case)
            tensors[f"{name}.logits"] = out.logits.float().contiguous()
            if out.loss is not None:
                tensors[f"{name}.loss"] = out.loss.detach().float().reshape(1)
        modeling = sys.modules[type(model).__module__]
        tensors.update(rope_tables(torch, modeling, type(config)))
        gen_tensors, records = generate_cases(torch, model, TINY_CONFIG)
        tensors.update(gen_tensors)
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, os.path.join(args.out, "golden.safetensors"))
    with open(os.path.join(args.out, "generate_cases.json"), "w") as f:
        json.dump(
            {
                "source": f"diffusion_generate of Dream's original generation_utils.py (transformers {__version__})",
                "note": "tensors live in golden.safetensors under the names given; history[i] is x after step i",
                "cases": records,
            },
            f,
            indent=1,
        )
        f.write("\n")
    make_tokenizer(workdir, ckpt, args.out)
    print(f"wrote {sorted(os.listdir(args.out))} to {args.out}")


def check_student(args, workdir: str):
    """Load a directory saved by our native class with the ORIGINAL code; compare logits with the golden ones."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    with open(os.path.join(args.check_student, "config.json")) as f:
        student_config = json.load(f)
    assert student_config.get("auto_map") == AUTO_MAP, f"auto_map not preserved: {student_config.get('auto_map')}"
    ckpt = checkpoint_with_code(args.check_student, args.original, workdir)
    # Dream's own `from_pretrained` drops `output_loading_info`, so compare the weights with the file directly:
    # every saved tensor is a parameter of the original class, every parameter was in the file, none re-initialised.
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True, torch_dtype=torch.float32).eval()
    saved = load_file(os.path.join(args.check_student, "model.safetensors"))
    state = model.state_dict()
    assert set(saved) == set(state), f"missing {set(state) - set(saved)}, unexpected {set(saved) - set(state)}"
    changed = [k for k, v in saved.items() if not torch.equal(state[k], v)]
    assert not changed, f"the original code did not load these tensors as saved: {changed}"
    golden = load_file(os.path.join(args.out, "golden.safetensors"))
    expected = load_file(args.expected) if args.expected else golden
    worst = 0.0
    with torch.no_grad():
        for name, case in forward_cases(torch, TINY_CONFIG).items():
            case = {k: (golden[f"{name}.{k}"] if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
            logits = run_case(model, case).logits
            delta = (logits - expected[f"{name}.logits"]).abs().max().item()
            worst = max(worst, delta)
            print(f"{name}: max |original logits - expected| = {delta:.3g}")
    assert worst <= 1e-4, f"the original code's logits for the student differ from the expected ones by {worst}"
    print(
        f"OK: the original code loads {args.check_student} cleanly and reproduces every golden case (max {worst:.3g})"
    )


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        # Keep remote-code modules and caches out of ~/.cache.
        os.environ["HF_HOME"] = os.path.join(workdir, "hf_home")
        os.environ["HF_MODULES_CACHE"] = os.path.join(workdir, "hf_modules")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if args.check_student:
            check_student(args, workdir)
        else:
            generate(args, workdir)


if __name__ == "__main__":
    main()
