"""LLaDA's tokenizer format, and a tiny tokenizer in that format for offline tests.

The published tokenizer (GSAI-ML/LLaDA-8B-Base / -Instruct) is a `PreTrainedTokenizerFast` (`tokenizer.json`) that
transformers loads without remote code. Its special tokens: `<|startoftext|>` (BOS, 126080), `<|endoftext|>` (EOS
and pad, 126081), `<|mdm_mask|>` (the diffusion mask, 126336, an added token but not the tokenizer's `mask_token`),
`<|start_header_id|>` / `<|end_header_id|>` (chat roles) and `<|eot_id|>` (end of turn, 126348), with a Llama-3-style
chat template.
"""

from __future__ import annotations

import json
import os

STARTOFTEXT, ENDOFTEXT, MASK_TOKEN = "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"
START_HEADER, END_HEADER, END_OF_TURN = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = (STARTOFTEXT, ENDOFTEXT, MASK_TOKEN, START_HEADER, END_HEADER, END_OF_TURN)  # published id order
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# The tiny tokenizer: the 256 byte-level symbols, these merges, then SPECIAL_TOKENS (ids 288..293).
TINY_MERGES = (
    ("Ġ", "t"), ("h", "e"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n"), ("r", "e"),
    ("Ġ", "s"), ("Ġ", "w"), ("Ġ", "o"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t"), ("e", "n"), ("o", "r"),
    ("i", "s"), ("e", "s"), ("Ġ", "i"), ("Ġ", "b"), ("Ġ", "f"), ("Ġ", "p"), ("i", "t"), ("a", "l"),
    ("Ġ", "m"), ("a", "r"), ("e", "d"), ("in", "g"), ("Ġ", "1"), ("Ġ", "2"), ("o", "u"), ("Ġ", "d"),
)  # fmt: skip
TINY_BPE_VOCAB_SIZE = 256 + len(TINY_MERGES)
TINY_SPECIAL_TOKEN_IDS = {token: TINY_BPE_VOCAB_SIZE + i for i, token in enumerate(SPECIAL_TOKENS)}


def make_tiny_tokenizer(save_directory: str):
    """Write a tiny tokenizer in LLaDA's published format to `save_directory` and load it back with AutoTokenizer.

    Same files and keys as the Hub repo (`tokenizer.json`, `tokenizer_config.json` naming `PreTrainedTokenizerFast`,
    `special_tokens_map.json`), same special-token names and chat template; a byte-level BPE of 288 entries instead
    of 126k, so the ids differ (`TINY_SPECIAL_TOKEN_IDS`).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for left, right in TINY_MERGES:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(TINY_MERGES)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])

    os.makedirs(save_directory, exist_ok=True)
    backend.save(os.path.join(save_directory, "tokenizer.json"))
    added = {
        str(TINY_SPECIAL_TOKEN_IDS[token]): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "added_tokens_decoder": added,
        "bos_token": STARTOFTEXT,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": ENDOFTEXT,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": ENDOFTEXT,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    special_tokens_map = {"bos_token": STARTOFTEXT, "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT}
    for filename, content in (
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", special_tokens_map),
    ):
        with open(os.path.join(save_directory, filename), "w") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
    return AutoTokenizer.from_pretrained(save_directory)


__all__ = ["CHAT_TEMPLATE", "MASK_TOKEN", "SPECIAL_TOKENS", "TINY_SPECIAL_TOKEN_IDS", "make_tiny_tokenizer"]
