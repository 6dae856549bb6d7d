"""The settings every distillation example here shares (T3D's): chat prompts with T3D's reasoning suffix, trajectories
decoded in blocks of 4 with one token per step, the model's own remote code, bfloat16 weights.

An example adds its model, dataset and anything of its own on top: `DEFAULTS = dict(T3D_DEFAULTS, model_name_or_path=
...)`. Each key is a command-line flag, so the command line (and a `--config` recipe) still overrides it.
"""

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
