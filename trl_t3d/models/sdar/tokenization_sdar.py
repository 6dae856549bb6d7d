"""A tiny tokenizer in SDAR's published format, for offline tests.

SDAR / TraDo checkpoints ship Qwen2's byte-level BPE tokenizer: `tokenizer.json`, `vocab.json`, `merges.txt` and a
`tokenizer_config.json` naming `Qwen2Tokenizer` (with an `auto_map` to the `tokenization_qwen2*.py` files they
carry). Its special tokens are Qwen3's (`<|endoftext|>` pad, `<|im_start|>`, `<|im_end|>` EOS and end of turn, the
tool/vision/FIM markers, `<think>` / `</think>`) followed by SDAR's mask token `<|MASK|>` (id 151669 in the real
vocabulary). transformers has `Qwen2Tokenizer`, so `AutoTokenizer.from_pretrained` loads these files without remote
code; `make_tiny_tokenizer` writes the same files and keys over a 320-token vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

MASK_TOKEN = "<|MASK|>"
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"  # also the end of an assistant turn
# Qwen3's added tokens in their published order; SDAR appends `<|MASK|>`. `special` as in the published config.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    (MASK_TOKEN, True),
)
# Byte-level BPE merges of the tiny vocabulary (256 bytes + these = 293 tokens, then the 27 added ones = 320).
MERGES: tuple[tuple[str, str], ...] = (
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
    ("r", "e"), ("a", "t"), ("e", "n"), ("Ġ", "w"), ("i", "s"), ("Ġ", "is"), ("Ġ", "o"), ("o", "r"),
    ("a", "n"), ("Ġ", "c"), ("e", "s"), ("Ġ", "f"), ("Ġ", "p"), ("Ġ", "1"), ("Ġ", "2"), ("Ġ", "="),
    ("Ġ", "+"), ("Ġ", "b"), ("Ġ", "m"), ("Ġ", "d"), ("Ġ", "h"), ("in", "g"), ("Ġw", "h"), ("Ġwh", "at"),
    ("Ġ", "I"), ("Ċ", "Ċ"), ("o", "u"), ("Ġ", "y"), ("Ġy", "ou"),
)  # fmt: skip
# A compact Qwen-style ChatML template: for system/user/assistant turns without tools or reasoning it renders
# the string Qwen3's template renders with thinking off.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def make_tiny_tokenizer(save_directory: str | Path) -> Path:
    """Write a 320-token tokenizer with SDAR's published files and keys to `save_directory`; return the path."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    vocab = {char: index for index, char in enumerate(_bytes_to_unicode().values())}
    for left, right in MERGES:
        if left not in vocab or right not in vocab or left + right in vocab:
            raise AssertionError(f"bad merge {left!r} + {right!r}")  # a slip in MERGES, not a user error
        vocab[left + right] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(MERGES), unk_token=None, eos_token=None, pad_token=None)
    # added in the published order first, so that the ids follow the vocabulary as on the Hub
    tokenizer.add_tokens([AddedToken(token, special=special, normalized=False) for token, special in ADDED_TOKENS])
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.mask_token = EOS_TOKEN, PAD_TOKEN, MASK_TOKEN
    tokenizer.save_pretrained(save_directory)

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token, _ in ADDED_TOKENS}
    if list(ids.values()) != list(range(len(vocab), len(vocab) + len(ADDED_TOKENS))):
        raise AssertionError(f"added tokens did not follow the vocabulary in order: {ids}")
    (save_directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (save_directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in MERGES) + "\n")
    # tokenizer_config.json as the Hub files have it (transformers 5 would write its own, shorter form)
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[token]): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for token, special in ADDED_TOKENS
        },
        "additional_special_tokens": [token for token, special in ADDED_TOKENS[1:] if special and token != MASK_TOKEN],
        "auto_map": {
            "AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer", "tokenization_qwen2_fast.Qwen2TokenizerFast"]
        },
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "mask_token": MASK_TOKEN,
        "model_max_length": 131072,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (save_directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (save_directory / "special_tokens_map.json").unlink(missing_ok=True)
    return save_directory


__all__ = ["ADDED_TOKENS", "EOS_TOKEN", "MASK_TOKEN", "PAD_TOKEN", "make_tiny_tokenizer"]
