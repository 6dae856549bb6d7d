"""T3D few-step distillation of LLaDA-8B-Instruct (GSAI-ML/LLaDA-8B-Instruct).

    # full fine-tuning, 8 GPUs, DeepSpeed ZeRO-3
    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml examples/distill_llada.py \\
        --config recipes/llada/t3d/config_full.yaml
    # QLoRA on one GPU, from a local copy of the model
    accelerate launch examples/distill_llada.py --model_name_or_path /models/LLaDA-8B-Instruct \\
        --use_peft --load_in_4bit --output_dir LLaDA-8B-Instruct-T3D-QLoRA

If the dataset holds prompts only, the model first collects its own trajectories (resumable, cached in
`<output_dir>/trajectories`); then the student trains (without `--config`: `DDOConfig`'s defaults, T3D's DDO + path
loss; `--loss_type t3d_mf` adds the mean-field term; the recipes hold the paper's exact settings) and is saved (weights, tokenizer,
`diffusion_generation_config.json`, model card) and pushed with `--push_to_hub`.
"""

from trl_t3d.scripts.distill import GSM8K, T3D_DEFAULTS, main, parse_args_with_defaults

DEFAULTS = dict(
    T3D_DEFAULTS,
    **GSM8K,
    model_name_or_path="GSAI-ML/LLaDA-8B-Instruct",
    adapter="llada",  # mask 126336; LoRA targets q_proj k_proj v_proj attn_out ff_proj up_proj ff_out
    generation_max_new_tokens=256,
    max_completion_length=256,
    activation_checkpointing=False,  # LLaDA's remote code has none
    output_dir="LLaDA-8B-Instruct-T3D",
)


def parse_args(argv=None):
    return parse_args_with_defaults(DEFAULTS, argv)


if __name__ == "__main__":
    main(*parse_args())
