"""`trl-t3d collect`: the teacher decodes a prompt dataset slowly and records its trajectories.

```bash
trl-t3d collect --model_name_or_path GSAI-ML/LLaDA-8B-Instruct --trust_remote_code \\
    --dataset_name openai/gsm8k --dataset_config main --prompt_column question --apply_chat_template true \\
    --max_new_tokens 256 --block_length 4 --tokens_per_step 1 --output_dir llada-gsm8k-trajectories
accelerate launch -m trl_t3d.cli collect --config recipe.yaml     # one shard of prompts per process
```
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field

from .utils import (
    DatasetArguments,
    DecodingArguments,
    TeacherArguments,
    build_parser,
    hub_dataset_name,
    load_model_and_tokenizer,
    load_prompt_dataset,
    make_generation_config,
)

logger = logging.getLogger(__name__)


@dataclass
class CollectArguments(DatasetArguments):
    """
    Trajectory collection: where to write, how to batch, whether to push. Dataset fields as in `DatasetArguments`.

    Parameters:
        output_dir (`str`):
            Where the trajectory dataset is saved (`save_to_disk`); finished shards go to `output_dir/shards` and a
            rerun of the same command resumes from them.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts decoded together (sorted by length, left padded).
        shard_size (`int`, *optional*, defaults to `256`):
            Prompts per shard (the unit of resumption and of the split between processes).
        resume (`bool`, *optional*, defaults to `True`):
            Skip finished shards; `false` starts over.
        keep_shards (`bool`, *optional*, defaults to `False`):
            Keep `output_dir/shards` after the dataset is saved.
        keep_columns (`list[str]`, *optional*):
            Other columns to carry over (e.g. `answer`).
        seed (`int`, *optional*, defaults to `0`):
            Sampling seed (per shard: seed + shard index).
        push_to_hub (`bool`, *optional*, defaults to `False`):
            Push the dataset with a dataset card.
        hub_dataset_id (`str`, *optional*):
            Dataset repo id; defaults to the name of `output_dir`.
        hub_private_repo (`bool`, *optional*):
            Create the repo private.
    """

    output_dir: str | None = field(default=None, metadata={"help": "Where to save the trajectory dataset."})
    batch_size: int = field(default=8, metadata={"help": "Prompts decoded together."})
    shard_size: int = field(default=256, metadata={"help": "Prompts per resumable shard."})
    resume: bool = field(default=True, metadata={"help": "Skip finished shards of an interrupted run."})
    keep_shards: bool = field(default=False, metadata={"help": "Keep the shard files after saving."})
    keep_columns: list[str] | None = field(default=None, metadata={"help": "Other columns to carry over."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset and its card to the Hub."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Dataset repo id on the Hub."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the repo private."})


def main(script_args: CollectArguments, model_args: TeacherArguments, decoding_args: DecodingArguments):
    """Collect, save to `output_dir`, optionally push; returns the trajectory dataset."""
    from accelerate import PartialState

    from ..collect import clear_shards, collect_trajectories
    from ..hub import push_trajectories_to_hub

    if not script_args.output_dir:
        raise ValueError(
            "`--output_dir` is required: the trajectory dataset (and resumable shards) are written there."
        )
    state = PartialState()
    dataset = load_prompt_dataset(script_args)
    model, tokenizer = load_model_and_tokenizer(model_args)
    generation_config = make_generation_config(
        mask_token_id=model_args.mask_token_id, **decoding_args.generation_kwargs()
    )
    shard_dir = os.path.join(script_args.output_dir, "shards")
    trajectories = collect_trajectories(
        model,
        tokenizer,
        dataset,
        generation_config,
        batch_size=script_args.batch_size,
        adapter=model_args.adapter,
        prompt_column=script_args.prompt_column,
        output_dir=shard_dir,
        shard_size=script_args.shard_size,
        resume=script_args.resume,
        teacher_name=model_args.model_name_or_path,
        teacher_revision=model_args.model_revision,
        reasoning_suffix=script_args.reasoning_suffix,
        apply_chat_template=script_args.apply_chat_template,
        keep_columns=script_args.keep_columns,
        seed=script_args.seed,
        dataset_name=hub_dataset_name(script_args),
    )
    if state.is_main_process:
        trajectories.save_to_disk(script_args.output_dir)
        if not script_args.keep_shards:
            clear_shards(shard_dir)
        meta = json.loads(trajectories.info.description)
        print(
            f"Saved {len(trajectories)} trajectories to {script_args.output_dir} (mean completion "
            f"{meta['mean_completion_length']:.1f} tokens, {meta['num_without_eos']} without EOS)."
        )
        if script_args.push_to_hub:
            repo_id = script_args.hub_dataset_id or os.path.basename(os.path.normpath(script_args.output_dir))
            push_trajectories_to_hub(trajectories, repo_id, private=script_args.hub_private_repo)
            print(f"Pushed the trajectories to https://huggingface.co/datasets/{repo_id}.")
    state.wait_for_everyone()
    return trajectories


DATACLASSES = (CollectArguments, TeacherArguments, DecodingArguments)


def read_distill_recipe(config: dict, path: str) -> dict:
    """A `trl-t3d distill` recipe as `collect` arguments: its teacher, prompts and teacher decoding, resolved by
    `DDOConfig` exactly as `distill` resolves them (presets included), so `collect` writes the trajectories `distill`
    would. A YAML of `collect`'s own arguments passes through unchanged."""
    from dataclasses import fields

    from .distill import make_parser as distill_parser

    own = {f.name for dtype in DATACLASSES for f in fields(dtype)}
    if all(key in own for key in config):
        return config
    distill = distill_parser()
    training_only = dict(bf16=False, fp16=False, push_to_hub=False, report_to="none", use_cpu=True)
    unknown = distill.set_defaults_with_config(**{**config, **training_only})
    if unknown:  # neither collect's nor distill's: the usual error names them (with "did you mean")
        return config
    script_args, training_args, model_args = distill.parse_args_into_dataclasses(args=[])
    settings = training_args.teacher_generation_settings()
    decoding = {f.name for f in fields(DecodingArguments)}
    extra = sorted(k for k in settings if k not in decoding and k != "mask_token_id")
    if extra:
        raise ValueError(
            f"The recipe {path} sets teacher decoding settings `trl-t3d collect` has no argument for ({extra}): "
            "collect with `trl-t3d distill` itself, or with `trl_t3d.collect_trajectories` in Python."
        )
    init_kwargs = dict(training_args.model_init_kwargs or {})
    collect = dict(
        model_name_or_path=model_args.model_name_or_path,
        model_revision=model_args.model_revision,
        dtype=str(init_kwargs.get("dtype", model_args.dtype)).replace("torch.", ""),
        adapter=training_args.adapter,
        mask_token_id=training_args.mask_token_id,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dataset_name=script_args.dataset_name,
        dataset_config=script_args.dataset_config,
        dataset_split=script_args.dataset_split,
        prompt_column=script_args.prompt_column,
        max_samples=script_args.max_samples,
        reasoning_suffix=script_args.reasoning_suffix,
        apply_chat_template=script_args.apply_chat_template,
        batch_size=training_args.generation_batch_size,
        shard_size=script_args.collect_shard_size,
        seed=training_args.seed,
        **{k: v for k, v in settings.items() if k in decoding},
    )
    logger.info("Read the teacher, data and teacher decoding of the distill recipe %s.", path)
    return {k: v for k, v in collect.items() if v is not None}


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    description = "Collect decoding trajectories (tokens + the step each was committed at) from a diffusion LM."
    return build_parser("collect", DATACLASSES, description, subparsers, prog, read_recipe=read_distill_recipe)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
