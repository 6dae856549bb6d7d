"""Dream's published tokenizer format, loaded natively (no `trust_remote_code`).

Dream ships a slow remote-code `DreamTokenizer` (`tokenization_dream.py`, named in `tokenizer_config.json`): Qwen2's
byte-level BPE with NFC normalisation and Qwen2's pre-tokenisation regex, plus `<|mask|>`. That is exactly
transformers' `Qwen2Tokenizer`, so our `DreamTokenizer` is that class under Dream's name: registered with
`AutoTokenizer` (see `trl_t3d.models.dream.register`), `AutoTokenizer.from_pretrained(path)` resolves the name in
`tokenizer_config.json` to it and reads the same `vocab.json` / `merges.txt` (or `tokenizer.json`) without running
the checkpoint's code. Its encodings are held to the original class by `tests/golden/dream/tokenizer_cases.json`.
"""

from __future__ import annotations

from transformers import Qwen2Tokenizer


class DreamTokenizer(Qwen2Tokenizer):
    """Dream's tokenizer (`<|endoftext|>` pad/EOS, `<|im_start|>`/`<|im_end|>` chat turns, `<|mask|>` mask)."""


def load_tokenizer(path_or_id, **kwargs) -> DreamTokenizer:
    """Load a Dream tokenizer directory or Hub id natively, whatever class its `tokenizer_config.json` names."""
    kwargs.pop("trust_remote_code", None)
    return DreamTokenizer.from_pretrained(path_or_id, **kwargs)


__all__ = ["DreamTokenizer", "load_tokenizer"]
