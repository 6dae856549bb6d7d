"""What one diffusion-LM family needs: noise, mask id, logit alignment, attention, training inputs.

The generation loop, the collator and the trainer only talk to an adapter; nothing else branches on
a model's name. An adapter is stateless apart from the resolved special-token ids.
"""

from __future__ import annotations

from typing import ClassVar

import torch

LLAMA_STYLE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _first_id(value):
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding aware positions: the first real token of each row is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class DiffusionAdapter:
    """Base adapter: a bidirectional masked-diffusion LM whose logit at i predicts token i (LLaDA-style).

    Subclasses override the class attributes, and `forward_kwargs` / `completion_logits` when their
    attention differs (see `BlockDiffusionAdapter`).
    """

    name: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    noise: ClassVar[str] = "mask"  # "mask" (absorbing) or "uniform"
    logits_shift: ClassVar[int] = 0  # 1: the logit at i - 1 predicts token i (Dream)
    block_causal: ClassVar[bool] = False
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    default_mask_token_id: ClassVar[int | None] = None
    mask_token_names: ClassVar[tuple[str, ...]] = ("<|mask|>", "<|MASK|>", "[MASK]", "<mask>")
    lora_target_modules: ClassVar[tuple[str, ...]] = LLAMA_STYLE_TARGETS
    # Why merging this family's LoRA adapters into the base weights would be wrong; None: merging is safe.
    lora_merge_unsafe_reason: ClassVar[str | None] = None
    supports_gradient_checkpointing: ClassVar[bool] = True
    accepts_position_ids: ClassVar[bool] = True
    extra_eos_token_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config=None, tokenizer=None, mask_token_id: int | None = None):
        self.config = config
        self.mask_token_id = self._resolve_mask_token_id(config, tokenizer, mask_token_id)
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad is None:
            pad = _first_id(getattr(config, "pad_token_id", None))
        eos = _as_id_list(getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None)
        eos += [e for e in _as_id_list(getattr(config, "eos_token_id", None)) if e not in eos]
        if tokenizer is not None:
            vocab = tokenizer.get_vocab()
            eos += [vocab[t] for t in self.extra_eos_token_names if t in vocab and vocab[t] not in eos]
        if pad is None:
            pad = eos[0] if eos else None
        self.pad_token_id = pad
        self.eos_token_ids = eos
        if self.noise == "mask" and pad is not None and pad == self.mask_token_id:
            raise ValueError(
                f"pad_token_id == mask_token_id == {pad}: padding would be read as noise. Give the tokenizer a "
                "distinct pad token (e.g. `tokenizer.pad_token = tokenizer.eos_token`)."
            )

    # ---------------------------------------------------------------- detection and special tokens
    @classmethod
    def matches(cls, config) -> bool:
        model_type = getattr(config, "model_type", None)
        return model_type is not None and model_type.lower() in {m.lower() for m in cls.model_types}

    def _resolve_mask_token_id(self, config, tokenizer, mask_token_id):
        if self.noise != "mask":
            return mask_token_id
        if mask_token_id is not None:
            return int(mask_token_id)
        if tokenizer is not None:
            if getattr(tokenizer, "mask_token_id", None) is not None:
                return int(tokenizer.mask_token_id)
            vocab = tokenizer.get_vocab()
            for name in self.mask_token_names:
                if name in vocab:
                    return int(vocab[name])
        if config is not None and getattr(config, "mask_token_id", None) is not None:
            return int(config.mask_token_id)
        if self.default_mask_token_id is not None:
            return self.default_mask_token_id
        raise ValueError(
            f"No mask token found for the '{self.name}' adapter: the tokenizer has no mask token and the config no "
            "`mask_token_id`. Pass `mask_token_id=...`, or add one: `tokenizer.add_special_tokens({'mask_token': "
            "'<|mask|>'})` then `model.resize_token_embeddings(len(tokenizer))`."
        )

    # ---------------------------------------------------------------- forward passes
    def forward_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        """Keyword arguments of one full-sequence forward: padding mask (None when there is none) and positions."""
        kwargs = {"input_ids": input_ids, "use_cache": False}
        if attention_mask is not None and not bool(attention_mask.all()):
            kwargs["attention_mask"] = attention_mask
            if self.accepts_position_ids:
                kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        return kwargs

    def align_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Make logits[:, i] the prediction for token i, whatever the family's convention."""
        if self.logits_shift == 0:
            return logits
        return torch.cat([logits[:, : self.logits_shift], logits[:, : -self.logits_shift]], dim=1)

    def forward(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned logits of one full-sequence forward."""
        out = model(**self.forward_kwargs(input_ids, attention_mask))
        logits = out.logits if hasattr(out, "logits") else out[0]
        return self.align_logits(logits)

    def completion_logits(
        self,
        model,
        prompt_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor | None,
        noisy_completion: torch.Tensor,
        clean_completion: torch.Tensor | None = None,
        block_length: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) for every completion position of the state `[prompt, noisy_completion]`.

        Bidirectional families see exactly the decoder's state; `clean_completion` and `block_length`
        only matter to block-causal families, which train all blocks at once on `[prompt, x_0, x_t]`.
        """
        input_ids = torch.cat([prompt_ids, noisy_completion], dim=1)
        attention_mask = None
        if prompt_attention_mask is not None:
            ones = torch.ones_like(noisy_completion, dtype=prompt_attention_mask.dtype)
            attention_mask = torch.cat([prompt_attention_mask, ones], dim=1)
        return self.forward(model, input_ids, attention_mask)[:, prompt_ids.shape[1] :]

    # ---------------------------------------------------------------- training helpers
    def noise_tokens(self, clean: torch.Tensor, noise_mask: torch.Tensor, generator=None, vocab_size=None):
        """Apply this family's noise where `noise_mask` is True (mask token, or uniform random tokens)."""
        if self.noise == "mask":
            return clean.masked_fill(noise_mask, self.mask_token_id)
        random = torch.randint(0, vocab_size, clean.shape, device=clean.device, generator=generator)
        return torch.where(noise_mask, random, clean)

    def resolve_lora_targets(self, model) -> list[str]:
        """The family's LoRA targets that exist in `model`; a clear error when none does."""
        leaf_names = {
            name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
        }
        found = [t for t in self.lora_target_modules if t in leaf_names]
        if not found:
            raise ValueError(
                f"None of the '{self.name}' adapter's LoRA targets {list(self.lora_target_modules)} is a Linear "
                f"module of this model (its Linear names: {sorted(leaf_names)}). Pass `lora_target_modules` explicitly."
            )
        return found

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask_token_id={self.mask_token_id}, pad={self.pad_token_id}, eos={self.eos_token_ids})"
