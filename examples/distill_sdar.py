"""T3D few-step distillation of SDAR-4B-Chat (JetLM/SDAR-4B-Chat): the paper's setting.

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml examples/distill_sdar.py \\
        --config recipes/sdar/t3d/config_full.yaml
    accelerate launch examples/distill_sdar.py --use_peft --lora_r 64 --lora_alpha 128 --load_in_4bit

Block diffusion: trajectories decoded with block 4 (one token per step), the student trained on blocks of 8 with
`[prompt, x_0, x_t]` inputs; MATH-train prompts with T3D's reasoning suffix. Prompt-only datasets are collected
first (resumable, `<output_dir>/trajectories`); the student is saved and pushed with `--push_to_hub`.
"""

from trl_t3d.scripts.distill import T3D_DEFAULTS, main, parse_args_with_defaults

DEFAULTS = dict(
    T3D_DEFAULTS,
    model_name_or_path="JetLM/SDAR-4B-Chat",
    adapter="sdar",  # mask <|MASK|> 151669
    dataset_name="DigitalLearningGmbH/MATH-lighteval",
    prompt_column="problem",
    generation_temperature=0.1,
    generation_max_new_tokens=1024,
    block_length=8,
    ref_sync_steps=10,
    output_dir="SDAR-4B-Chat-T3D",
)


def parse_args(argv=None):
    return parse_args_with_defaults(DEFAULTS, argv)


if __name__ == "__main__":
    main(*parse_args())
