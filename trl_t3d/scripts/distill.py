"""`trl-t3d distill`: T3D trajectory self-distillation with DDO, end to end.

prompts -> (teacher trajectories, resumable, cached in `output_dir/trajectories`) -> DDOTrainer -> save -> push.

```bash
trl-t3d distill --config recipes/sdar/t3d/config_full.yaml
accelerate launch --config_file recipes/accelerate_configs/zero2.yaml -m trl_t3d.cli distill \\
    --config recipes/llada/t3d/config_lora.yaml --learning_rate 2e-5
```

A dataset that already holds trajectories (a `step_map` column) is trained on directly.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field

from .utils import (
    DatasetArguments,
    build_parser,
    given_on_command_line,
    hub_dataset_name,
    load_diffusion_model,
    load_prompt_dataset,
    parse_command_line,
)

logger = logging.getLogger(__name__)

# The settings the distillation examples share (T3D's): chat prompts with T3D's reasoning suffix, trajectories decoded
# in blocks of 4 with one token per step, the model's own remote code, bfloat16 weights. An example adds its model and
# dataset: `DEFAULTS = dict(T3D_DEFAULTS, model_name_or_path=...)`; each key is a command-line flag, so the command
# line (and a `--config` recipe) still overrides it.
T3D_DEFAULTS = dict(
    trust_remote_code=True,
    dtype="bfloat16",  # full fine-tuning keeps fp32 master weights of the student (see README, "Precision")
    apply_chat_template=True,
    reasoning_suffix="\nPlease reason step by step, and put your final answer within \\boxed{}.",
    generation_block_length=4,  # T3D: block 4, one token per step
    generation_tokens_per_step=1,
)

# GSM8K's train split, as the LLaDA and Dream examples distill on it.
GSM8K = dict(dataset_name="openai/gsm8k", dataset_config="main", prompt_column="question")


@dataclass
class DistillArguments(DatasetArguments):
    """
    Data of the distillation run. Dataset fields as in `DatasetArguments`; model/LoRA/4-bit fields come from TRL's
    `ModelConfig`; training, loss and teacher-decoding fields from `DDOConfig`.

    Parameters:
        trajectory_dir (`str`, *optional*):
            Where self-collected trajectories are cached (resumable shards, then `save_to_disk`). Defaults to
            `output_dir/trajectories`. A rerun reuses a finished collection.
        collect_shard_size (`int`, *optional*, defaults to `256`):
            Prompts per resumable collection shard.
        push_trajectories (`bool`, *optional*, defaults to `False`):
            Also push the self-collected trajectories (with a dataset card) when `push_to_hub` is set.
        hub_dataset_id (`str`, *optional*):
            Dataset repo id for `push_trajectories`; defaults to `<hub_model_id>-trajectories`.
    """

    trajectory_dir: str | None = field(
        default=None, metadata={"help": "Cache of self-collected trajectories; default output_dir/trajectories."}
    )
    collect_shard_size: int = field(default=256, metadata={"help": "Prompts per resumable collection shard."})
    push_trajectories: bool = field(default=False, metadata={"help": "Also push the collected trajectories."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Dataset repo id for the trajectories."})


def _is_trajectory_dataset(dataset, prompt_column: str) -> bool:
    """A `step_map` column means trajectories; completions without one are an error (see `is_prompt_only`)."""
    from ..trajectories import is_prompt_only

    if "step_map" in dataset.column_names:
        return True
    is_prompt_only(dataset, prompt_column)  # raises for completions that lost their step map
    return False


def load_or_collect_trajectories(script_args: DistillArguments, training_args, model, tokenizer, model_id: str):
    """(trajectories, self_collected): the dataset itself if it holds trajectories, else the teacher's, collected
    through `collect.collect_or_reuse` (resumable shards, then a cache reused only for the same collection)."""
    from ..collect import collect_or_reuse

    dataset = load_prompt_dataset(script_args)
    if _is_trajectory_dataset(dataset, script_args.prompt_column):
        return dataset, False
    trajectories = collect_or_reuse(
        model,
        tokenizer,
        dataset,
        training_args.teacher_generation_config(training_args.mask_token_id),
        cache_dir=script_args.trajectory_dir or os.path.join(training_args.output_dir, "trajectories"),
        batch_size=training_args.generation_batch_size,
        adapter=training_args.adapter,
        prompt_column=script_args.prompt_column,
        shard_size=script_args.collect_shard_size,
        teacher_name=model_id,
        reasoning_suffix=script_args.reasoning_suffix,
        apply_chat_template=script_args.apply_chat_template,
        seed=training_args.seed,
        dataset_name=hub_dataset_name(script_args),
    )
    return trajectories, True


def model_init_kwargs_for_loading(training_args, model_args) -> dict:
    """`DDOConfig.model_init_kwargs` for the script's own loading of the model (all of them, not only `dtype`), after
    refusing a value given twice with two meanings (`--dtype` and `model_init_kwargs.dtype`, ...)."""
    init_kwargs = dict(training_args.model_init_kwargs or {})
    defaults = {"dtype": "float32", "attn_implementation": None}  # TRL ModelConfig's defaults
    for key, default in defaults.items():
        given = getattr(model_args, key, None)
        if key in init_kwargs and given != default and str(init_kwargs[key]).replace("torch.", "") != str(given):
            raise ValueError(
                f"Two values for the model's `{key}`: `--{key} {given}` and `model_init_kwargs` {key}="
                f"{init_kwargs[key]!r}. Keep one of them."
            )
    for key, given in (
        ("trust_remote_code", training_args.trust_remote_code),
        ("revision", model_args.model_revision),
    ):
        if key in init_kwargs and init_kwargs.pop(key) != given:
            raise ValueError(
                f"`model_init_kwargs` sets {key}, which the command line's `--{key if key != 'revision' else 'model_revision'}"
                f" {given}` already decides: remove it from `model_init_kwargs`."
            )
    return init_kwargs


def main(script_args: DistillArguments, training_args, model_args):
    """Load the teacher, get trajectories, train the student with DDO, save it and optionally push it.

    Returns the trainer (its `model` is the student; the saved folder is `training_args.output_dir`).
    """
    from trl import get_peft_config, get_quantization_config

    from ..hub import push_student_to_hub, push_trajectories_to_hub
    from ..resolved import load_tokenizer
    from ..trainer import DDOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("`--model_name_or_path` is required (a Hub id or a local directory).")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        if not model_args.use_peft:
            raise ValueError("4-bit / 8-bit loading trains LoRA adapters only: add `--use_peft`.")
    model_id = model_args.model_name_or_path
    tokenizer = load_tokenizer(
        model_id, trust_remote_code=training_args.trust_remote_code, revision=model_args.model_revision
    )
    init_kwargs = model_init_kwargs_for_loading(training_args, model_args)
    model = load_diffusion_model(
        model_id,
        adapter=training_args.adapter,
        trust_remote_code=training_args.trust_remote_code,
        revision=model_args.model_revision,
        dtype=init_kwargs.pop("dtype", model_args.dtype),
        attn_implementation=init_kwargs.pop("attn_implementation", model_args.attn_implementation),
        quantization_config=init_kwargs.pop("quantization_config", None) or get_quantization_config(model_args),
        **init_kwargs,
    )
    training_args.model_init_kwargs = None  # applied here; the trainer gets the loaded model
    train_dataset, self_collected = load_or_collect_trajectories(
        script_args, training_args, model, tokenizer, model_id
    )

    peft_config = get_peft_config(model_args)

    # The push happens once, at the end, with the card and the decoding config in the folder (not on every save).
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = DDOTrainer(
        model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        trainer.accelerator.print(f"Student saved to {training_args.output_dir}.")
        if push_to_hub:
            repo_id = training_args.hub_model_id or os.path.basename(os.path.normpath(training_args.output_dir))
            push_student_to_hub(
                training_args.output_dir,
                repo_id,
                private=training_args.hub_private_repo,
                token=training_args.hub_token,
            )
            trainer.accelerator.print(f"Student pushed to https://huggingface.co/{repo_id}.")
            if script_args.push_trajectories and self_collected:
                dataset_id = script_args.hub_dataset_id or f"{repo_id}-trajectories"
                push_trajectories_to_hub(
                    train_dataset, dataset_id, private=training_args.hub_private_repo, token=training_args.hub_token
                )
                trainer.accelerator.print(f"Trajectories pushed to https://huggingface.co/datasets/{dataset_id}.")
    training_args.push_to_hub = push_to_hub
    return trainer


def _model_config_class():
    """TRL's `ModelConfig` without `lora_target_modules`, which `DDOConfig` already has (one flag, one meaning)."""
    from dataclasses import dataclass as _dataclass

    from trl import ModelConfig

    @_dataclass
    class ModelConfigForT3D(ModelConfig):
        __doc__ = ModelConfig.__doc__
        lora_target_modules: list[str] | None = field(default=None, init=False, repr=False)

    return ModelConfigForT3D


def recipe_hub_model_id_for_this_run(parsed, argv: list[str], recipe: dict | None) -> None:
    """A recipe's `hub_model_id` names the model that recipe makes. When this run makes another one (a LoRA adapter
    from a full fine-tuning recipe with `--use_peft`, or another `--output_dir`), the card and the push must not
    point at it: the id is dropped (the card then names the output folder), and a push without `--hub_model_id` is
    refused."""
    _, training_args, model_args = parsed
    if not recipe or not recipe.get("hub_model_id") or given_on_command_line(argv, "hub_model_id"):
        return
    if training_args.hub_model_id != recipe["hub_model_id"]:
        return
    reasons = []
    if model_args.use_peft and not recipe.get("use_peft"):
        reasons.append("`--use_peft` makes a LoRA adapter, and the recipe's id names its fully fine-tuned model")
    recipe_dir = recipe.get("output_dir")
    if recipe_dir and os.path.normpath(str(recipe_dir)) != os.path.normpath(training_args.output_dir):
        reasons.append(f"`--output_dir {training_args.output_dir}` replaces the recipe's `{recipe_dir}`")
    if not reasons:
        return
    if training_args.push_to_hub:
        raise ValueError(
            f"The recipe's `hub_model_id: {recipe['hub_model_id']}` is not this run's model ({'; '.join(reasons)}). "
            "Pass `--hub_model_id <owner>/<name>` to say which repository this student is pushed to."
        )
    logger.warning(
        "Not using the recipe's hub_model_id %r for this student (%s): its card names %r instead; pass "
        "`--hub_model_id` to choose.",
        recipe["hub_model_id"],
        "; ".join(reasons),
        os.path.basename(os.path.normpath(training_args.output_dir)),
    )
    training_args.hub_model_id = None


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    from ..trainer import DDOConfig

    description = "Distill a diffusion LM into a few-step student with T3D (trajectory self-distillation + DDO)."
    parser = build_parser(
        "distill", (DistillArguments, DDOConfig, _model_config_class()), description, subparsers, prog
    )
    parser.t3d_after_parse = recipe_hub_model_id_for_this_run
    return parser


def parse_args_with_defaults(defaults: dict, argv: list[str] | None = None):
    """Parse `argv` (with `--config` and overrides) on top of per-model `defaults` (the examples' entry point).

    Precedence: command line > `--config` recipe > `defaults` > dataclass defaults.
    """
    parser = make_parser()
    unknown = parser.set_defaults_with_config(**defaults)
    if unknown:
        raise ValueError(
            f"Unknown default arguments {unknown[::2]}: not fields of DistillArguments/DDOConfig/ModelConfig."
        )
    return parse_command_line(parser, argv)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
