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
        tokens_per_step (`int`, *optional*):
            Tokens committed per denoising step (1, the default when `steps` is unset, is the slow, high-quality
            teacher).
        steps (`int`, *optional*):
            Total denoising steps; `None` derives them from `tokens_per_step`.
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked tokens to commit: `low_confidence`, `random`, `margin`, `entropy` or `origin` (Dream).
        schedule (`str`, *optional*, defaults to `"llada"`):
            Tokens per step: `llada` (even split) or `dream` (Dream's `diffusion_generate` timesteps, with `eps`).
        eps (`float`, *optional*):
            Last time of Dream's schedule (default 1e-3).
        threshold (`float`, *optional*):
            Confidence threshold for parallel (dynamic) decoding; commits every token above it.
        factor (`float`, *optional*):
            Fast-dLLM's factor rule instead of a threshold (rank r commits when confidence >= 1 - factor / (r + 1)).
        threshold_rule (`str`, *optional*, defaults to `"scheduled"`):
            `scheduled`: the threshold/factor adds to the scheduled count; `fast_dllm`: Fast-dLLM's rule, no count.
        cache (`str`, *optional*, defaults to `"none"`):
            Approximate KV cache of bidirectional models (Fast-dLLM): `none` (exact), `prefix` or `dual`. Faster,
            with slightly different tokens; exact decoding stays the default for trajectory collection.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature; 0 is greedy (T3D collects at 0.1).
        top_k (`int`, *optional*):
            Top-k filtering.
        top_p (`float`, *optional*):
            Nucleus filtering.
    """

    max_new_tokens: int = field(default=256, metadata={"help": "Completion budget (tokens)."})
    block_length: int = field(default=4, metadata={"help": "Block length of semi-autoregressive decoding."})
    tokens_per_step: int | None = field(default=None, metadata={"help": "Tokens per denoising step (default 1)."})
    steps: int | None = field(default=None, metadata={"help": "Total steps; None derives them from tokens_per_step."})
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Remasking policy.", "choices": ["low_confidence", "random", "margin", "entropy", "origin"]},
    )
    schedule: str = field(
        default="llada", metadata={"help": "Tokens per step: llada or dream.", "choices": ["llada", "dream"]}
    )
    eps: float | None = field(default=None, metadata={"help": "Last time of Dream's schedule (default 1e-3)."})
    threshold: float | None = field(default=None, metadata={"help": "Confidence threshold (parallel decoding)."})
    factor: float | None = field(default=None, metadata={"help": "Fast-dLLM's factor rule (instead of threshold)."})
    threshold_rule: str = field(
        default="scheduled",
        metadata={"help": "How threshold/factor combine with the schedule.", "choices": ["scheduled", "fast_dllm"]},
    )
    cache: str = field(
        default="none",
        metadata={"help": "Approximate KV cache (bidirectional models).", "choices": ["none", "prefix", "dual"]},
    )
    cache_refresh_interval: int | None = field(
        default=None, metadata={"help": "With prefix/dual: full refresh every N forwards of a block (None: once)."}
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k filtering."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus (top-p) filtering."})

    def generation_kwargs(self) -> dict:
        """The decoding fields (`generation.config.DECODING_FIELDS`) given here, for a `DiffusionGenerationConfig`."""
        from ..generation.config import DECODING_FIELDS

        return {k: getattr(self, k) for k in DECODING_FIELDS if getattr(self, k, None) is not None}


# ------------------------------------------------------------------------------------------------ loaders
def load_prompt_dataset(args: DatasetArguments):
    """A `datasets.Dataset` from a Hub id, a `save_to_disk` directory or a data file; split and `max_samples`."""
    import datasets

    name = args.dataset_name
    if not name:
        raise ValueError("No dataset: pass `--dataset_name` (a Hub id, a `save_to_disk` directory or a data file).")
    if args.dataset_config and os.path.exists(name):
        logger.warning(
            "`--dataset_config %s` is ignored: %s is a local %s, which has no configurations (only Hub datasets do).",
            args.dataset_config,
            name,
            "folder" if os.path.isdir(name) else "file",
        )
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
    elif not os.path.exists(name) and (
        os.path.splitext(name)[1].lower() in DATA_FILE_BUILDERS or name.startswith((".", "/", "~"))
    ):  # a path, not a Hub id: say so instead of asking the Hub for it
        raise FileNotFoundError(
            f"No such data file or directory: {name} (from {os.getcwd()}). Check the path, or give a Hub dataset id."
        )
    else:
        dataset = datasets.load_dataset(name, name=args.dataset_config)
    if isinstance(dataset, datasets.DatasetDict):
        if args.dataset_split not in dataset:
            raise ValueError(f"Split '{args.dataset_split}' not in {name}; its splits: {sorted(dataset)}.")
        dataset = dataset[args.dataset_split]
    elif args.dataset_split != "train":  # a saved `Dataset` has no splits: the requested one cannot be honoured
        raise ValueError(
            f"{name} holds one dataset without splits, so `--dataset_split {args.dataset_split}` cannot select from "
            "it. Drop `--dataset_split` to use all of it, or save a `DatasetDict` with that split."
        )
    if args.max_samples is not None:
        if args.max_samples < 1:
            raise ValueError(f"`--max_samples` must be >= 1 (or unset for all rows), got {args.max_samples}.")
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
    processing_class=None,
    **model_kwargs,
):
    """The model of `trl_t3d.load_diffusion_lm`, the one loader (family detection, native classes, the mask id);
    `model_kwargs` go to `from_pretrained` (e.g. `DDOConfig.model_init_kwargs`).

    An unknown family raises the registry's error, which lists the supported families and how to pass one.
    """
    from ..resolved import load_diffusion_lm

    return load_diffusion_lm(
        model_name_or_path,
        adapter=adapter,
        trust_remote_code=trust_remote_code,
        revision=revision,
        dtype=dtype,
        attn_implementation=attn_implementation,
        quantization_config=quantization_config,
        processing_class=processing_class,
        **model_kwargs,
    ).model.eval()


def make_generation_config(**kwargs):
    """A `DiffusionGenerationConfig` from keyword settings (None values are left to its defaults)."""
    from ..generation import DiffusionGenerationConfig

    return DiffusionGenerationConfig(**{k: v for k, v in kwargs.items() if v is not None})


def load_model_and_tokenizer(model_args: TeacherArguments):
    """Tokenizer and diffusion model named by `--model_name_or_path` (shared by `collect` and `eval`).

    A folder with `adapter_config.json` (a LoRA student) loads its base model with the adapter on top.
    """
    from ..resolved import load_tokenizer

    if not model_args.model_name_or_path:
        raise ValueError("`--model_name_or_path` is required (a Hub id or a local directory).")
    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
    )
    model = load_diffusion_model(  # a LoRA student folder loads its base model with the adapter on top
        model_args.model_name_or_path,
        adapter=model_args.adapter,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        processing_class=tokenizer,
    )
    return model, tokenizer


HELP_SECTIONS = {
    "DDOConfig": "T3D / DDO: loss, training states, reference, teacher decoding, student (DDOConfig)",
    "DistillArguments": "data (DistillArguments)",
    "CollectArguments": "data and output (CollectArguments)",
    "EvalArguments": "task, budgets and output (EvalArguments)",
    "TeacherArguments": "model (TeacherArguments)",
    "DecodingArguments": "decoding (DecodingArguments)",
    "ModelConfigForT3D": "model, LoRA and 4-bit loading (trl.ModelConfig)",
}
TRAINING_SECTION = "training (transformers.TrainingArguments: optimizer, schedule, precision, saving, logging, hub)"
CONFIG_HELP = {
    "distill": "YAML recipe: keys are the argument names below (e.g. recipes/llada/t3d/config_lora.yaml); arguments "
    "given on the command line override it. A key no argument knows is an error.",
    "collect": "YAML of the arguments below; arguments given on the command line override it. A `trl-t3d distill` "
    "recipe (e.g. recipes/llada/t3d/config_lora.yaml) works too: its teacher, data and teacher-decoding settings are "
    "read (what `distill` would collect), its training settings are left out.",
    "eval": "YAML of the arguments below; arguments given on the command line override it. A key no argument knows is "
    "an error (a `trl-t3d distill` recipe is refused, with the `eval` command for the student it writes).",
}


def _arrange_help(parser, dataclass_types) -> None:
    """One help section per dataclass in the command's order; a config's own fields before the TrainingArguments
    it inherits, so `--help` starts with what is specific to T3D instead of 700 lines of transformers options."""
    import argparse
    import dataclasses

    from transformers import TrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    section_of, titles = {}, []
    for dtype in dataclass_types:
        title = HELP_SECTIONS.get(dtype.__name__, dtype.__name__)
        titles.append(title)
        for field_ in dataclasses.fields(dtype):
            own = not issubclass(dtype, TrainingArguments) or field_.name not in inherited
            section_of[field_.name] = title if own else TRAINING_SECTION
    if any(issubclass(d, TrainingArguments) for d in dataclass_types):
        titles.append(TRAINING_SECTION)
    groups = {title: parser.add_argument_group(title) for title in titles}
    default = parser._optionals
    for action in list(default._group_actions):
        title = section_of.get(action.dest)
        if title is not None:
            default._group_actions.remove(action)
            groups[title]._group_actions.append(action)
    default.add_argument(
        "--config",
        metavar="RECIPE.yaml",
        dest="config",
        default=argparse.SUPPRESS,
        help=CONFIG_HELP.get(getattr(parser, "t3d_command", None), CONFIG_HELP["distill"]),
    )


BF16_ON_CPU_HINT = (
    "This machine has no GPU with bf16 support, and the recipes ask for `bf16: true` (they target GPUs): add "
    "`--bf16 false` to train in fp32 on the CPU, or `--use_cpu true` to keep bf16 autocast on the CPU (slower)."
)


def _option_names(parser) -> list[str]:
    return sorted({a.dest for a in parser._actions if a.option_strings and a.dest not in ("help", "config")})


def _unknown_message(names: list[str], known: list[str], prefix: str = "") -> str:
    """`--x` (did you mean `--y`?), one per unknown name."""
    import difflib

    parts = []
    for name in names:
        close = difflib.get_close_matches(name.replace("-", "_"), known, n=1, cutoff=0.75)
        parts.append(f"`{prefix}{name}`" + (f" (did you mean `{prefix}{close[0]}`?)" if close else ""))
    return ", ".join(parts)


def _pop_config(argv: list[str]) -> tuple[list[str], str | None]:
    """`argv` without `--config PATH` / `--config=PATH`, and PATH."""
    argv, path = list(argv), None
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ValueError("`--config` needs a path to a YAML recipe.")
            path = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            del argv[i]
            break
    return argv, path


def read_recipe(path: str) -> dict:
    """A YAML recipe as a dict (a missing file or a file that is no mapping is said so)."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No recipe at {path} (from {os.getcwd()}). Check the path given to `--config`.")
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"The recipe {path} must be a YAML mapping of argument names to values.")
    return config


def parse_command_line(parser, argv=None):
    """Recipe (`--config`) + command line into the command's dataclasses, like `TrlParser.parse_args_and_config`, with
    errors that name the fix: an unknown key or flag gets "did you mean", abbreviations are refused (`allow_abbrev`
    off: `--learning_rat` is not `--learning_rate`), and a command may read another command's recipe through
    `parser.t3d_read_recipe` (`collect` reads a distill recipe's teacher settings)."""
    import sys

    argv, recipe_path = _pop_config(sys.argv[1:] if argv is None else argv)
    known = _option_names(parser)
    recipe = None
    if recipe_path is not None:
        config = read_recipe(recipe_path)
        recipe = dict(config)
        for key, value in (config.pop("env", None) or {}).items():
            os.environ[key] = str(value)
        read_recipe_hook = getattr(parser, "t3d_read_recipe", None)
        if read_recipe_hook is not None:
            config = read_recipe_hook(config, recipe_path)
        unknown = [key for key in config if key not in known]
        if unknown:
            command = getattr(parser, "t3d_command", None)
            raise ValueError(
                f"Unknown key(s) in the recipe {recipe_path}: {_unknown_message(unknown, known)}. Every key must be an "
                f"argument of {'`trl-t3d ' + command + '`' if command else 'the command'} (listed by `--help`): fix the "
                "spelling or remove the key."
            )
        parser.set_defaults_with_config(**config)
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as err:
        import torch

        if "bf16" in str(err) and not torch.cuda.is_available():
            raise ValueError(f"{err} {BF16_ON_CPU_HINT}") from None
        raise
    if remaining:
        flags = [a.split("=", 1)[0][2:] for a in remaining if a.startswith("--")]
        raise ValueError(
            f"Unknown argument(s) {_unknown_message(flags, known, '--') if flags else remaining}: fix the spelling "
            "(names are matched whole, never by prefix) or see `--help`."
        )
    after_parse = getattr(parser, "t3d_after_parse", None)
    if after_parse is not None:
        after_parse(parsed, argv, recipe)
    return tuple(parsed)


def given_on_command_line(argv: list[str], name: str) -> bool:
    """Whether `--name` (or `--name=...`, or its hyphenated spelling) is among the command-line arguments."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    return any(arg.split("=", 1)[0] in spellings for arg in argv)


def build_parser(
    command: str,
    dataclass_types: tuple,
    description: str,
    subparsers=None,
    prog: str | None = None,
    read_recipe=None,
):
    """The `TrlParser` of one `trl-t3d` command, standalone or as a subcommand of `subparsers`; `read_recipe(path)`
    reads a `--config` that is another command's recipe (the CLI calls it as `parser.t3d_read_recipe`)."""
    from trl import TrlParser

    if subparsers is not None:
        parser = subparsers.add_parser(
            command, help=description, description=description, dataclass_types=dataclass_types, allow_abbrev=False
        )
    else:  # allow_abbrev=False: `--learning_rat` is an unknown flag, not silently `--learning_rate`
        parser = TrlParser(dataclass_types, prog=prog, description=description, allow_abbrev=False)
    parser.t3d_command = command
    if read_recipe is not None:
        parser.t3d_read_recipe = read_recipe
    parser.usage = "%(prog)s [-h] [--config RECIPE.yaml] [--<argument> VALUE ...]"  # the full list is below
    _arrange_help(parser, dataclass_types)
    return parser
