"""T3D few-step distillation of Dream-v0-Instruct-7B (Dream-org/Dream-v0-Instruct-7B).

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml examples/distill_dream.py \\
        --config recipes/dream/t3d/config_full.yaml
    accelerate launch examples/distill_dream.py --use_peft --load_in_4bit --output_dir Dream-7B-T3D-QLoRA

Dream's logits are shifted by one position (it was trained from an autoregressive model); the `dream` adapter
aligns them, so data, trainer and decoder are the same as for LLaDA.
"""

from trl_t3d.scripts.distill import GSM8K, T3D_DEFAULTS, main, parse_args_with_defaults

DEFAULTS = dict(
    T3D_DEFAULTS,
    **GSM8K,
    model_name_or_path="Dream-org/Dream-v0-Instruct-7B",
    adapter="dream",  # mask 151666
    generation_max_new_tokens=256,
    max_completion_length=256,
    output_dir="Dream-v0-Instruct-7B-T3D",
)


def parse_args(argv=None):
    return parse_args_with_defaults(DEFAULTS, argv)


if __name__ == "__main__":
    main(*parse_args())
