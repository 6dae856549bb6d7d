"""Native transformers-5 classes of the published diffusion-LM families.

The families' own modeling code (loaded with `trust_remote_code`) does not run on transformers 5. These classes
load the published checkpoints unchanged (same config keys, same parameter names) and are registered with
transformers' Auto classes under the published `model_type`, so `from_pretrained(path_or_id)` uses them without
remote code. Each family lives in its own subpackage; `register_native_models()` runs on `import trl_t3d`.
"""

from __future__ import annotations

NATIVE_FAMILIES: dict[str, str] = {}  # model_type -> subpackage, filled by the imports below

# One line per family subpackage (each defines `register()`):
NATIVE_FAMILIES["llada"] = "llada"
NATIVE_FAMILIES["Dream"] = "dream"
NATIVE_FAMILIES["sdar"] = "sdar"
NATIVE_FAMILIES["llada2_moe"] = "llada2"
NATIVE_FAMILIES["llada21_moe"] = "llada2"
NATIVE_FAMILIES["lladamoe"] = "llada_moe"
# NATIVE-FAMILY-IMPORTS


def register_native_models() -> None:
    """Register every native config/model class with AutoConfig / AutoModel / AutoModelForCausalLM (idempotent)."""
    import importlib

    for subpackage in sorted(set(NATIVE_FAMILIES.values())):
        importlib.import_module(f".{subpackage}", __name__).register()
