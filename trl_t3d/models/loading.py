"""Native classes win over a checkpoint's own code, and saved students keep that code for other users.

A published checkpoint names its modeling files in `config.json`'s `auto_map`; with `trust_remote_code=True`
transformers would run them, and on transformers 5 they fail. When one of our native classes covers the config's
`model_type`, loading drops `trust_remote_code` (one log line says so); `use_remote_code=True` is the explicit
opt-in to the checkpoint's own files. On save, those files are copied beside the student so that people without
this package (and the original code's own environment) can still load it through the unchanged `auto_map`.
"""

from __future__ import annotations

import logging
import os
import shutil

from . import NATIVE_FAMILIES

logger = logging.getLogger(__name__)

CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


def read_config_dict(name_or_path, **kwargs) -> dict:
    """The raw `config.json` of a local directory or Hub id, without running any code."""
    from transformers import PretrainedConfig

    config_dict, _ = PretrainedConfig.get_config_dict(
        str(name_or_path), **{k: v for k, v in kwargs.items() if k in CONFIG_KWARGS}
    )
    return config_dict


def native_model_type(config_or_dict) -> str | None:
    """The `model_type` when a native class covers it, else None."""
    model_type = (
        config_or_dict.get("model_type")
        if isinstance(config_or_dict, dict)
        else getattr(config_or_dict, "model_type", None)
    )
    return model_type if model_type in NATIVE_FAMILIES else None


def prefer_native(name_or_path, kwargs: dict, use_remote_code: bool = False) -> dict:
    """`kwargs` for `from_pretrained`, without `trust_remote_code` when a native class covers the checkpoint.

    Raises when `use_remote_code=True` is given without `trust_remote_code=True` (the opt-in needs both).
    """
    kwargs = dict(kwargs)
    if use_remote_code:
        if not kwargs.get("trust_remote_code"):
            raise ValueError(
                "`use_remote_code=True` runs the checkpoint's own code: pass `trust_remote_code=True` too."
            )
        return kwargs
    if not kwargs.get("trust_remote_code") or "config" in kwargs:
        return kwargs
    model_type = native_model_type(read_config_dict(name_or_path, **kwargs))
    if model_type is not None:
        kwargs.pop("trust_remote_code")
        logger.info(
            "Loading %s with trl_t3d's native '%s' classes, not its own modeling code (which does not run on "
            "transformers 5). Pass `use_remote_code=True` to run the checkpoint's code instead.",
            name_or_path,
            model_type,
        )
    return kwargs


def remote_code_class(name_or_path, auto_class: str, **kwargs):
    """The checkpoint's own class for `auto_class` (e.g. "AutoConfig", "AutoModel") from its `auto_map`, imported from
    its files: `use_remote_code=True` must run that code even where a native class is registered for the type."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = read_config_dict(name_or_path, **kwargs).get("auto_map") or {}
    if auto_class not in auto_map:
        raise ValueError(
            f"`use_remote_code=True`, but {name_or_path}'s config.json names no {auto_class} in its `auto_map` "
            f"({sorted(auto_map)}): load it without `use_remote_code`."
        )
    reference = auto_map[auto_class]
    reference = reference[0] if isinstance(reference, (list, tuple)) else reference
    return get_class_from_dynamic_module(
        reference, str(name_or_path), **{k: v for k, v in kwargs.items() if k in CONFIG_KWARGS}
    )


def original_code_files(config) -> list[str]:
    """The `.py` files the config's `auto_map` names (e.g. `modeling_llada.py`), in a stable order."""
    files = []
    for reference in (getattr(config, "auto_map", None) or {}).values():
        for ref in reference if isinstance(reference, (list, tuple)) else [reference]:
            if not ref:
                continue
            module = ref.split("--")[-1].rsplit(".", 1)[0]  # "repo--modeling_x.Class" -> "modeling_x"
            name = f"{module}.py"
            if name not in files:
                files.append(name)
    return files


def copy_original_code(config, save_directory: str) -> list[str]:
    """Copy the checkpoint's own modeling files next to a saved student; returns the files copied.

    Sources, in order: the directory the model was loaded from, then the Hub repo it came from. A file that cannot
    be found is named in a warning (the student then loads only with trl_t3d's native classes).
    """
    source = str(getattr(config, "_name_or_path", "") or "")
    copied, missing = [], []
    for name in original_code_files(config):
        target = os.path.join(save_directory, name)
        if os.path.isfile(target):
            copied.append(name)
            continue
        path = os.path.join(source, name) if source else ""
        if not (path and os.path.isfile(path)) and source and not os.path.isdir(source):
            path = _hub_file(source, name)
        if path and os.path.isfile(path) and os.path.abspath(path) != os.path.abspath(target):
            shutil.copyfile(path, target)
            copied.append(name)
        else:
            missing.append(name)
    if missing:
        logger.warning(
            "Saved %s without the original modeling files %s (not found beside %r): its config still names them "
            "in `auto_map`, so it loads with trl_t3d's native classes; copy them from the base checkpoint for users "
            "who load it with `trust_remote_code=True`.",
            save_directory,
            missing,
            source or "the model",
        )
    return copied


def _hub_file(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, filename)
    except Exception:  # offline, gated or not a Hub id: the caller warns
        return None
