"""`DiffusionLMGenerationMixin`: `model.diffusion_generate(...)` on any loaded diffusion LM, and its loader."""

from __future__ import annotations

import os

from ..adapters import get_adapter
from ..adapters.registry import resolve_adapter_class
from ..models.loading import copy_original_code, native_model_type, prefer_native, remote_code_class
from .config import DIFFUSION_GENERATION_CONFIG_NAME, DiffusionGenerationConfig
from .decode import diffusion_generate


class DiffusionLMGenerationMixin:
    """Adds `diffusion_generate` to a transformers model; the family adapter is resolved once and cached.

    Attributes read from the instance: `diffusion_generation_config` (defaults), `diffusion_adapter` (adapter name,
    instance or None for detection) and `diffusion_processing_class` (tokenizer used to find special tokens).
    """

    diffusion_generation_config: DiffusionGenerationConfig | None = None

    @classmethod
    def can_generate(cls) -> bool:
        """Whether transformers' own `generate` applies: only for a real `GenerationMixin`, never because of us.

        transformers answers by looking for "GenerationMixin" in the names of the base classes, which this mixin's
        name matches; `save_pretrained` would then write a `generation_config` that a model loaded with `AutoModel`
        (LLaDA, Dream) never had, and every checkpoint save would fail.
        """
        from transformers import GenerationMixin

        return issubclass(cls, GenerationMixin)

    def get_diffusion_adapter(self):
        adapter = self.__dict__.get("_diffusion_adapter_instance")
        if adapter is None:
            adapter = get_adapter(
                self,
                self.__dict__.get("diffusion_adapter"),
                tokenizer=self.__dict__.get("diffusion_processing_class"),
                mask_token_id=getattr(self.diffusion_generation_config, "mask_token_id", None),
            )
            self.__dict__["_diffusion_adapter_instance"] = adapter
        return adapter

    def diffusion_generate(self, input_ids, attention_mask=None, generation_config=None, **kwargs):
        """See `trl_t3d.diffusion_generate`; defaults come from `self.diffusion_generation_config`."""
        kwargs.setdefault("adapter", self.get_diffusion_adapter())
        kwargs.setdefault("processing_class", self.__dict__.get("diffusion_processing_class"))
        config = generation_config if generation_config is not None else self.diffusion_generation_config
        return diffusion_generate(self, input_ids, attention_mask, config, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The model's `save_pretrained`, plus `diffusion_generation_config.json` when a config is set."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.diffusion_generation_config is not None:
            self.diffusion_generation_config.save_pretrained(save_directory)
        if native_model_type(self.config) is not None and kwargs.get("is_main_process", True):
            copy_original_code(self.config, str(save_directory))
        return result


_MIXED_CLASSES: dict[type, type] = {}


def _with_mixin(cls: type) -> type:
    if issubclass(cls, DiffusionLMGenerationMixin):
        return cls
    if cls not in _MIXED_CLASSES:
        _MIXED_CLASSES[cls] = type(cls.__name__, (DiffusionLMGenerationMixin, cls), {"__module__": cls.__module__})
    return _MIXED_CLASSES[cls]


def add_diffusion_generation(model, adapter=None, processing_class=None, generation_config=None):
    """Give an already loaded model `diffusion_generate` (its class becomes a subclass with the mixin, in place).

    Args:
        model: a loaded transformers model.
        adapter (`str` or `DiffusionAdapter`, *optional*): the family; detected from the config when omitted.
        processing_class (*optional*): tokenizer used to find mask / pad / EOS ids.
        generation_config (`DiffusionGenerationConfig`, *optional*): the model's default decoding settings.
    """
    model.__class__ = _with_mixin(type(model))
    model.__dict__["diffusion_adapter"] = adapter
    model.__dict__["diffusion_processing_class"] = processing_class
    model.__dict__.pop("_diffusion_adapter_instance", None)
    if generation_config is not None:
        model.diffusion_generation_config = generation_config
    elif model.__dict__.get("diffusion_generation_config") is None:
        model.diffusion_generation_config = DiffusionGenerationConfig()
    model.get_diffusion_adapter()  # fail now, not at the first decode, when the family is unsupported
    return model


class AutoModelForDiffusionLM:
    """Loads any supported diffusion LM with its family's Auto class and returns it with `diffusion_generate`."""

    def __init__(self, *args, **kwargs):
        raise OSError("Use `AutoModelForDiffusionLM.from_pretrained(...)`.")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        adapter=None,
        mask_token_id=None,
        processing_class=None,
        use_remote_code: bool = False,
        **kwargs,
    ):
        """Read the config, pick the adapter, load with its `auto_class` (or its own `load_model`), add the mixin.

        LLaDA, Dream and SDAR checkpoints load with trl_t3d's native classes (`trl_t3d.models`), also when
        `trust_remote_code=True` is given; `use_remote_code=True` (with `trust_remote_code=True`) runs the
        checkpoint's own modeling code instead. Every other keyword goes to transformers' `from_pretrained`. A
        `diffusion_generation_config.json` next to the weights becomes the model's default decoding settings.
        """
        import transformers

        _check_local_path(pretrained_model_name_or_path)
        config_kwargs = {
            k: kwargs[k]
            for k in ("trust_remote_code", "revision", "token", "cache_dir", "local_files_only")
            if k in kwargs
        }
        lora_base = _lora_base_model(pretrained_model_name_or_path, config_kwargs, kwargs)
        if lora_base is not None:  # a LoRA student: its base model, then the adapter on top
            from peft import PeftModel

            base_kwargs = {k: v for k, v in kwargs.items() if k != "revision"}
            base = cls.from_pretrained(
                lora_base,
                *model_args,
                adapter=adapter,
                mask_token_id=mask_token_id,
                processing_class=processing_class,
                use_remote_code=use_remote_code,
                **base_kwargs,
            )
            saved = _saved_generation_config(pretrained_model_name_or_path, config_kwargs)
            if saved is not None:  # the student's recommended decoding, not the base model's
                if mask_token_id is not None:
                    saved.mask_token_id = int(mask_token_id)
                base.diffusion_generation_config = saved
            revision = {"revision": kwargs["revision"]} if "revision" in kwargs else {}
            return PeftModel.from_pretrained(base, pretrained_model_name_or_path, **revision).eval()
        kwargs = prefer_native(pretrained_model_name_or_path, kwargs, use_remote_code)
        config = kwargs.pop("config", None)
        if config is None and use_remote_code:
            config_class = remote_code_class(pretrained_model_name_or_path, "AutoConfig", **kwargs)
            config = config_class.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        elif config is None:
            config = transformers.AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        if adapter is None and mask_token_id is not None:
            from ..adapters import ADAPTERS

            if not any(c.matches(config) for c in ADAPTERS.values()):
                adapter = "generic"
        adapter_cls = adapter if not isinstance(adapter, str) and adapter is not None else None
        if adapter_cls is None or isinstance(adapter_cls, type):
            adapter_cls = resolve_adapter_class(config, adapter)
        else:  # an adapter instance
            adapter_cls = type(adapter_cls)
        loader = getattr(adapter_cls, "load_model", None)
        if loader is not None:
            model = loader(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        elif use_remote_code:
            model_class = remote_code_class(pretrained_model_name_or_path, adapter_cls.auto_class, **kwargs)
            model = model_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        else:
            auto = getattr(transformers, adapter_cls.auto_class, None)
            if auto is None:
                raise ValueError(
                    f"The '{adapter_cls.name}' adapter's auto_class {adapter_cls.auto_class!r} is not a transformers "
                    "class; give the adapter a `load_model(name_or_path, config=..., **kwargs)` classmethod."
                )
            model = auto.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        generation_config = _saved_generation_config(pretrained_model_name_or_path, config_kwargs)
        if generation_config is None:
            generation_config = DiffusionGenerationConfig()
        if mask_token_id is not None:
            generation_config.mask_token_id = int(mask_token_id)
        if isinstance(adapter, str) or adapter is None:
            adapter = adapter_cls.name if adapter is None else adapter
        model.eval()
        return add_diffusion_generation(model, adapter, processing_class, generation_config)


def _check_local_path(name_or_path) -> None:
    """A path that does not exist gets an error that says so, not huggingface_hub's "Repo id must be in the form"."""
    name = str(name_or_path)
    if name.startswith(("./", "../", "/", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise OSError(
            f"No model directory at {name!r}: the path does not exist. Give the folder that holds the checkpoint "
            "(config.json and weights, or a LoRA student's adapter_config.json), or a Hub id such as "
            "'GSAI-ML/LLaDA-8B-Instruct'."
        )


def _lora_base_model(name_or_path, config_kwargs: dict, kwargs: dict) -> str | None:
    """The base model of a LoRA student (a folder or repo with `adapter_config.json` and no `config.json`), else None."""
    import json

    name = str(name_or_path)
    if os.path.isdir(name):
        if os.path.isfile(os.path.join(name, "config.json")):
            return None
        path = os.path.join(name, "adapter_config.json")
        path = path if os.path.isfile(path) else None
    else:
        from transformers.utils import find_adapter_config_file

        hub_kwargs = {k: v for k, v in config_kwargs.items() if k != "trust_remote_code"}
        try:
            path = find_adapter_config_file(name, **hub_kwargs)
        except (OSError, ValueError):
            path = None
    if path is None:
        return None
    with open(path) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{path} names no `base_model_name_or_path`: cannot tell which model the LoRA adapter is for."
        )
    if kwargs.get("config") is not None:
        raise ValueError("`config=` describes a full model, but the folder holds a LoRA adapter; drop `config`.")
    return base


def _saved_generation_config(name_or_path, config_kwargs: dict) -> DiffusionGenerationConfig | None:
    """The `diffusion_generation_config.json` saved next to the weights (a student's recommended decoding), if any."""
    name = str(name_or_path)
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, DIFFUSION_GENERATION_CONFIG_NAME)):
            return None
        return DiffusionGenerationConfig.from_pretrained(name)
    try:
        return DiffusionGenerationConfig.from_pretrained(name, **config_kwargs)
    except (OSError, ValueError):
        return None
