"""Preparing the policy for training: LoRA / QLoRA (the family's target modules checked against the model, the LM
head kept out of the adapter, k-bit preparation, merging refused where the family makes it wrong), gradient
checkpointing where the model's code supports it, and fp32 master weights for full fine-tuning."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def linear_leaf_names(model) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return names


def vocabulary_heads(model) -> list[str]:
    """Full names of the Linear layers that project onto the vocabulary (the LM head, whatever it is called)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and vocab is not None and module.out_features == vocab
    ]


def refuse_merging(peft_model, reason: str) -> None:
    """Make `merge_and_unload` / `merge_adapter` raise (on the PeftModel and its LoRA model) instead of merging wrong."""

    def refuse(*args, **kwargs):
        raise ValueError(
            f"{reason} Keep the adapter unmerged: save it with `trainer.save_model()` and load it with "
            "`PeftModel.from_pretrained(base_model, path)`."
        )

    for target in (peft_model, peft_model.base_model):
        for method in ("merge_and_unload", "merge_adapter"):
            object.__setattr__(target, method, refuse)


def wrap_peft(model, peft_config, adapter, lora_target_modules=None, gradient_checkpointing: bool = False):
    """`get_peft_model` with the family's LoRA targets (`lora_target_modules` or the adapter's list when the config
    names none), checked to match Linear modules, and the vocabulary projection excluded."""
    from accelerate.utils import is_peft_model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if is_peft_model(model):
        raise ValueError("`model` is already a PeftModel: omit `peft_config`, or pass the base model.")
    linear_names = linear_leaf_names(model)
    targets = peft_config.target_modules
    if targets is None:
        targets = list(lora_target_modules) if lora_target_modules else adapter.resolve_lora_targets(model)
        peft_config.target_modules = set(targets)
    if not isinstance(targets, str):  # a regex or "all-linear" is left to PEFT
        # Leaf names ("q_proj") or full module names (DiffusionGemma's adapter names text layers only).
        full_names = {name for name, _ in model.named_modules()}
        found = [t for t in targets if t in linear_names or t in full_names]
        if not found:
            raise ValueError(
                f"None of the LoRA target_modules {sorted(targets)} names a Linear module of this model (its "
                f"Linear names: {sorted(linear_names)}). The '{adapter.name}' family uses "
                f"{list(adapter.lora_target_modules)}; leave `target_modules` unset to use them."
            )
        missing = sorted(set(targets) - set(found))
        if missing:
            logger.warning("LoRA target_modules %s match no module of this model and are ignored.", missing)
    if getattr(peft_config, "task_type", None) == "CAUSAL_LM" and not hasattr(model, "prepare_inputs_for_generation"):
        # LLaDA / Dream load with AutoModel and are no GenerationMixin: PEFT's causal-LM wrapper would crash.
        logger.info("%s is not a transformers generation model: LoRA with task_type=None.", type(model).__name__)
        peft_config.task_type = None
    heads = vocabulary_heads(model)
    if heads and not getattr(peft_config, "exclude_modules", None):
        # LLaDA names its LM head `ff_out`, like its MLP output: keep LoRA off the vocabulary projection.
        peft_config.exclude_modules = heads
    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    model = get_peft_model(model, peft_config)
    if adapter.lora_merge_unsafe_reason:
        refuse_merging(model, adapter.lora_merge_unsafe_reason)
    return model


# ------------------------------------------------------------------------------------------------ checkpointing
def checkpointing_enabled(args) -> bool:
    # transformers >= 5.24 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name mirrors it)
    return bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)


def checkpointing_kwargs(args):
    return getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs


def set_checkpointing(args, enabled: bool, kwargs: dict | None = None) -> None:
    for prefix in ("activation", "gradient"):
        if hasattr(args, f"{prefix}_checkpointing"):
            setattr(args, f"{prefix}_checkpointing", enabled)
            if kwargs is not None:
                setattr(args, f"{prefix}_checkpointing_kwargs", kwargs)


def configure_checkpointing(model, adapter, args) -> None:
    """Gradient checkpointing only where the model's code supports it (a warning names the fix otherwise), and
    non-reentrant by default."""
    from accelerate.utils import is_peft_model

    if not checkpointing_enabled(args):
        return
    base = model.get_base_model() if is_peft_model(model) else model
    if not (adapter.supports_gradient_checkpointing and getattr(base, "supports_gradient_checkpointing", False)):
        logger.warning(
            "Gradient checkpointing is not supported by this model's code (%s adapter, %s): training without "
            "it. Set `activation_checkpointing=False` to silence this warning, or lower the batch size / use "
            "LoRA if memory is short.",
            adapter.name,
            type(base).__name__,
        )
        set_checkpointing(args, False)
    elif not checkpointing_kwargs(args):
        set_checkpointing(args, True, {"use_reentrant": False})


# ------------------------------------------------------------------------------------------------ precision
def keep_fp32_master_weights(model, ref_model, args, use_peft: bool):
    """Full fine-tuning of a half-precision model trains fp32 master weights (see `DDOConfig.pure_half_precision`);
    returns the loaded dtype that the final save writes back, or None."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    dtype = getattr(model, "dtype", None)
    if use_peft or dtype not in (torch.bfloat16, torch.float16) or is_quantized(model):
        return None
    if args.pure_half_precision:
        logger.warning(
            "Training the %s weights as loaded (`pure_half_precision=True`): AdamW updates below half a unit of the "
            "last place are rounded away (at lr 1e-5 most of them).",
            dtype,
        )
        return None
    if args.deepspeed_plugin is not None or is_deepspeed_zero3_enabled():
        return None  # DeepSpeed keeps its own fp32 master copy of the weights
    logger.info(
        "Full fine-tuning of a %s model: the trained weights are kept in fp32 (master weights; the reference stays "
        "%s)%s. `pure_half_precision=True` trains them in %s instead.",
        dtype,
        dtype,
        "; compute in bf16 under autocast" if args.bf16 else "; `bf16=True` computes in bf16 under autocast",
        dtype,
    )
    model.float()
    if ref_model is not None and not (args.bf16 or args.fp16):
        ref_model.float()  # fp32 compute: the reference scores in fp32 too, so policy and reference agree at step 0
    return dtype
