"""Argument dataclasses and loaders shared by the `collect`, `distill` and `eval` scripts."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass
class DatasetArguments:
    """
    Where the prompts come from.

    Parameters:
        dataset_name (`str`, *optional*):
            A Hub dataset id, a local directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or a
            data file (`.json`, `.jsonl`, `.parquet`, `.csv`).
        dataset_config (`str`, *optional*):
            Dataset configuration name (the `name` argument of `datasets.load_dataset`).
        dataset_split (`str`, *optional*, defaults to `"train"`):
            Split to use.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column with the prompts: strings or lists of chat messages. A `messages` column (whole conversations) or
            a `prompt_ids` column is used when this one is absent.
        max_samples (`int`, *optional*):
            Use only the first `max_samples` rows (quick runs).
        reasoning_suffix (`str`, *optional*):
            Text appended to every prompt (last user message), e.g. T3D's
            "\\nPlease reason step by step, and put your final answer within \\\\boxed{}.".
        apply_chat_template (`bool`, *optional*):
            `None`: chat template for conversational prompts only (as TRL). `True`: plain-string prompts too, as one
            user message (what instruct models expect). `False`: never.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, `save_to_disk` directory, or a .json/.jsonl/.parquet/.csv file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Dataset split to use."})
    prompt_column: str = field(
        default="prompt", metadata={"help": "Prompt column (strings or chat messages); else `messages`/`prompt_ids`."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    reasoning_suffix: str | None = field(default=None, metadata={"help": "Text appended to every prompt."})
    apply_chat_template: bool | None = field(
        default=None,
        metadata={"help": "None: chat template for message lists only (TRL); true: plain strings too; false: never."},
    )


@dataclass
class TeacherArguments:
    """
    The diffusion LM to load (the teacher for `collect`, the evaluated model for `eval`).

    Parameters:
        model_name_or_path (`str`):
            Hub id or local directory of the model.
        model_revision (`str`, *optional*, defaults to `"main"`):
            Branch, tag or commit of the model on the Hub.
        dtype (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"bfloat16"`, `"float16"` or `"float32"`.
        adapter (`str`, *optional*):
            Model family ("llada", "dream", "sdar", "generic", ...). `None` detects it from the config.
        mask_token_id (`int`, *optional*):
            Mask token id when neither the tokenizer nor the config has one.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the model's own modeling code (LLaDA, Dream and SDAR need it).
        attn_implementation (`str`, *optional*):
            Attention implementation (e.g. `"sdpa"`).
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local directory."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit on the Hub."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype.", "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    adapter: str | None = field(default=None, metadata={"help": "Model family; None detects it from the config."})
    mask_token_id: int | None = field(default=None, metadata={"help": "Mask token id (when the tokenizer lacks one)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own modeling code."})
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention implementation."})


@dataclass
class DecodingArguments:
    """
    Diffusion decoding settings (a `DiffusionGenerationConfig`).

    Parameters:
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Completion budget.
        block_length (`int`, *optional*, defaults to `4`):
            Semi-autoregressive block length (T3D: 4).
        tokens_per_step (`int`, *optional*, defaults to `1`):
            Tokens committed per denoising step (1 = the slow, high-quality teacher).
        steps (`int`, *optional*):
            Total denoising steps; `None` derives them from `tokens_per_step`.
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked tokens to commit: `low_confidence`, `random`, `margin` or `entropy`.
        threshold (`float`, *optional*):
            Confidence threshold for parallel (dynamic) decoding; commits every token above it.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature; 0 is greedy (T3D collects at 0.1).
        top_k (`int`, *optional*):
            Top-k filtering.
        top_p (`float`, *optional*):
            Nucleus filtering.
    """

    max_new_tokens: int = field(default=256, metadata={"help": "Completion budget (tokens)."})
    block_length: int = field(default=4, metadata={"help": "Block length of semi-autoregressive decoding."})
    tokens_per_step: int = field(default=1, metadata={"help": "Tokens committed per denoising step."})
    steps: int | None = field(default=None, metadata={"help": "Total steps; None derives them from tokens_per_step."})
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Remasking policy.", "choices": ["low_confidence", "random", "margin", "entropy"]},
    )
    threshold: float | None = field(default=None, metadata={"help": "Confidence threshold (parallel decoding)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k filtering."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus (top-p) filtering."})

    def generation_kwargs(self) -> dict:
        keys = (
            "max_new_tokens",
            "block_length",
            "tokens_per_step",
            "steps",
            "remasking",
            "threshold",
            "temperature",
            "top_k",
            "top_p",
        )
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


# ------------------------------------------------------------------------------------------------ loaders
def load_prompt_dataset(args: DatasetArguments):
    """A `datasets.Dataset` from a Hub id, a `save_to_disk` directory or a data file; split and `max_samples`."""
    import datasets

    name = args.dataset_name
    if not name:
        raise ValueError("No dataset: pass `--dataset_name` (a Hub id, a `save_to_disk` directory or a data file).")
    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_info.json"))
        or os.path.exists(os.path.join(name, "dataset_dict.json"))
    ):
        dataset = datasets.load_from_disk(name)
    elif os.path.isfile(name):
        ext = os.path.splitext(name)[1].lower()
        if ext not in DATA_FILE_BUILDERS:
            raise ValueError(f"Unsupported data file {name}: use one of {sorted(DATA_FILE_BUILDERS)}.")
        dataset = datasets.load_dataset(DATA_FILE_BUILDERS[ext], data_files={args.dataset_split: name})
    else:
        dataset = datasets.load_dataset(name, name=args.dataset_config)
    if isinstance(dataset, datasets.DatasetDict):
        if args.dataset_split not in dataset:
            raise ValueError(f"Split '{args.dataset_split}' not in {name}; its splits: {sorted(dataset)}.")
        dataset = dataset[args.dataset_split]
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    return dataset


def hub_dataset_name(args: DatasetArguments) -> str | None:
    """The dataset's Hub id for metadata and cards; None for local files and directories (not a Hub reference)."""
    name = args.dataset_name
    return None if not name or os.path.exists(name) else name


def resolve_dtype(dtype):
    import torch

    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, dtype)


def load_diffusion_model(
    model_name_or_path: str,
    *,
    adapter: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype="auto",
    attn_implementation: str | None = None,
    quantization_config=None,
):
    """Load a DLLM with its family's auto class (AutoModel for LLaDA/Dream, AutoModelForCausalLM for SDAR...).

    An unknown family raises the registry's error, which lists the supported families and how to pass one.
    """
    import torch
    import transformers
    from transformers import AutoConfig

    from ..adapters import resolve_adapter_class

    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    family = resolve_adapter_class(config, adapter)
    kwargs = dict(trust_remote_code=trust_remote_code, revision=revision, dtype=resolve_dtype(dtype))
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        from accelerate import PartialState

        kwargs["quantization_config"] = quantization_config
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": PartialState().local_process_index}
    auto_class = getattr(transformers, family.auto_class)
    return auto_class.from_pretrained(model_name_or_path, **kwargs).eval()


def load_tokenizer(model_name_or_path: str, *, trust_remote_code: bool = False, revision: str | None = None):
    """The model's tokenizer, left padded (prompts are left padded for batched decoding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, revision=revision
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def make_generation_config(**kwargs):
    """A `DiffusionGenerationConfig` from keyword settings (None values are left to its defaults)."""
    from ..generation import DiffusionGenerationConfig

    return DiffusionGenerationConfig(**{k: v for k, v in kwargs.items() if v is not None})


def load_model_and_tokenizer(model_args: TeacherArguments):
    """Tokenizer and diffusion model named by `--model_name_or_path` (shared by `collect` and `eval`)."""
    if not model_args.model_name_or_path:
        raise ValueError("`--model_name_or_path` is required (a Hub id or a local directory).")
    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
    )
    model = load_diffusion_model(
        model_args.model_name_or_path,
        adapter=model_args.adapter,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    return model, tokenizer


def build_parser(command: str, dataclass_types: tuple, description: str, subparsers=None, prog: str | None = None):
    """The `TrlParser` of one `trl-t3d` command, standalone or as a subcommand of `subparsers`."""
    from trl import TrlParser

    if subparsers is not None:
        return subparsers.add_parser(
            command, help=description, description=description, dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog, description=description)
