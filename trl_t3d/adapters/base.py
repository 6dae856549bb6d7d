"""The adapter contract: everything a diffusion-LM family answers, in one abstract base class.

The generation loop, the collator and the trainer only talk to an adapter; nothing else branches on a model's name.
`BaseDiffusionAdapter` declares every attribute and hook they use (the conformance tests check that they use no
other); `DiffusionAdapter` implements it for bidirectional masked-diffusion LMs (LLaDA-style), the base of most
families. An adapter is stateless apart from the special-token ids it resolves once.
"""

from __future__ import annotations

import abc
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


class BaseDiffusionAdapter(abc.ABC):
    """What the decoder, the collator and the trainer may ask of a diffusion-LM family, and nothing more.

    Class attributes (the family's facts):
        name: registry name (`adapter="..."`).
        model_types: `config.model_type` values (also looked for in `auto_map`) that select this family.
        auto_class: transformers Auto class (or top-level class) the family's checkpoints load with.
        noise: "mask" (absorbing: noised positions hold the mask token) or "uniform" (random tokens).
        logits_shift: 1 when the logit at i - 1 predicts token i (Dream), else 0.
        block_causal: attention is causal across blocks, so training sees `[prompt, x_0, x_t]` and trains every block
            of a completion in one forward; bidirectional families train one visited state per forward.
        default_mask_token_id / mask_token_names: where the mask id comes from when the tokenizer has no mask token.
        extra_eos_token_names: end-of-turn tokens that end a completion besides EOS (LLaDA's `<|eot_id|>`).
        lora_target_modules: the family's LoRA target names.
        lora_merge_unsafe_reason: why merging LoRA weights into the base would be wrong (None: merging is safe).
        supports_gradient_checkpointing: whether the family's modeling code can checkpoint activations.

    Instance attributes (resolved once from tokenizer and config, see `__init__`):
        mask_token_id, pad_token_id, eos_token_ids (EOS and end-of-turn ids), end_of_turn_token_ids.

    Hooks: `completion_logits` (abstract: the one forward both decoding and training use), `noise_tokens`,
    `resolve_lora_targets`, `trained_block_length`, `decoding_session`, and the optional exact block KV cache
    (`supports_block_cache`, `init_cache`, `cached_forward`); `supports_approximate_cache` says whether Fast-dLLM's
    prefix/dual cache applies (it then cuts `forward_kwargs` of `DiffusionAdapter` to a window).
    """

    name: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    noise: ClassVar[str] = "mask"
    logits_shift: ClassVar[int] = 0
    block_causal: ClassVar[bool] = False
    default_mask_token_id: ClassVar[int | None] = None
    mask_token_names: ClassVar[tuple[str, ...]] = ("<|mask|>", "<|MASK|>", "[MASK]", "<mask>")
    extra_eos_token_names: ClassVar[tuple[str, ...]] = ()
    lora_target_modules: ClassVar[tuple[str, ...]] = LLAMA_STYLE_TARGETS
    lora_merge_unsafe_reason: ClassVar[str | None] = None
    supports_gradient_checkpointing: ClassVar[bool] = True

    config: object
    mask_token_id: int | None
    pad_token_id: int | None
    eos_token_ids: list[int]
    end_of_turn_token_ids: list[int]

    def __init__(self, config=None, tokenizer=None, mask_token_id: int | None = None):
        """Resolve the special ids once: mask (argument > tokenizer > family names > config > family default), pad
        (tokenizer > config > first EOS), EOS (tokenizer, config, then the family's end-of-turn tokens)."""
        self.config = config
        self.mask_token_id = self._resolve_mask_token_id(config, tokenizer, mask_token_id)
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad is None:
            pad = _first_id(getattr(config, "pad_token_id", None))
        eos = _as_id_list(getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None)
        eos += [e for e in _as_id_list(getattr(config, "eos_token_id", None)) if e not in eos]
        end_of_turn = []
        if tokenizer is not None:
            vocab = tokenizer.get_vocab()
            end_of_turn = [vocab[t] for t in self.extra_eos_token_names if t in vocab]
            eos += [e for e in end_of_turn if e not in eos]
        if pad is None:
            pad = eos[0] if eos else None
        self.pad_token_id = pad
        self.eos_token_ids = eos
        self.end_of_turn_token_ids = end_of_turn
        if self.noise == "mask" and pad is not None and pad == self.mask_token_id:
            raise ValueError(
                f"pad_token_id == mask_token_id == {pad}: padding would be read as noise. Give the tokenizer a "
                "distinct pad token (e.g. `tokenizer.pad_token = tokenizer.eos_token`)."
            )

    # ---------------------------------------------------------------- detection and special tokens
    @classmethod
    def matches(cls, config) -> bool:
        """Whether `config` belongs to this family (by `model_type`)."""
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

    # ---------------------------------------------------------------- the forward decoding and training share
    @abc.abstractmethod
    def completion_logits(
        self,
        model,
        prompt_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor | None,
        noisy_completion: torch.Tensor,
        clean_completion: torch.Tensor | None = None,
        block_length: int | None = None,
    ) -> torch.Tensor:
        """Aligned logits (B, L, V) for every completion position of the state `[prompt, noisy_completion]`:
        `logits[:, i]` predicts completion token i. Block-causal families train all blocks at once when given the
        `clean_completion` x_0 (block b of the noisy completion sees the clean blocks < b)."""

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

    def fsdp_weight_sharing_groups(self, model) -> list[list[torch.nn.Module]]:
        """Modules that share weights and must therefore form one FSDP2 group each (`fully_shard([a, b])`): FSDP2
        refuses a parameter seen by two groups, and accelerate's auto-wrap groups by layer. None for most families."""
        return []

    # ---------------------------------------------------------------- decoding hooks
    def trained_block_length(self, model) -> int | None:
        """The block size the model was trained with, which decoding defaults to (SDAR: `config.block_size`)."""
        return getattr(getattr(model, "config", None), "block_size", None)

    def decoding_session(self, model, prompt_ids, prompt_attention_mask, completion_length, block_length, use_cache):
        """The family's own decoding session (an object with `block_logits(canvas, start, end)`), or None for the
        decoder's default (the block KV cache when `supports_block_cache`, else full-sequence forwards)."""
        return None

    @property
    def supports_block_cache(self) -> bool:
        """Whether the family implements the exact KV cache of finished blocks (`init_cache` + `cached_forward`)."""
        return self.block_causal and type(self).cached_forward is not BaseDiffusionAdapter.cached_forward

    @property
    def supports_approximate_cache(self) -> bool:
        """Whether decoding may use Fast-dLLM's approximate prefix/dual KV cache (`cache="prefix" | "dual"`):
        bidirectional masked-diffusion families whose full-sequence forward (`forward_kwargs`) the decoder can cut to
        a window. Block-causal families are cached exactly instead; families with their own session decline."""
        return (
            not self.block_causal
            and self.noise == "mask"
            and hasattr(self, "forward_kwargs")
            and type(self).decoding_session is BaseDiffusionAdapter.decoding_session
        )

    def init_cache(self, model):
        """An empty KV cache for `model` (block-causal families with `supports_block_cache`)."""
        raise NotImplementedError(f"The '{self.name}' adapter has no block KV cache.")

    def cached_forward(self, model, cache, chunk_ids, key_valid, prompt_length: int, block_length: int, keep: int):
        """Aligned logits of `chunk_ids`, the positions right after those in `cache`; keeps `keep` of them cached."""
        raise NotImplementedError(f"The '{self.name}' adapter has no block KV cache.")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mask_token_id={self.mask_token_id}, pad={self.pad_token_id}, "
            f"eos={self.eos_token_ids})"
        )


class DiffusionAdapter(BaseDiffusionAdapter):
    """Bidirectional masked-diffusion LM whose logit at i predicts token i (LLaDA-style): the default implementation.

    Subclasses override the class attributes, and `forward_kwargs` / `completion_logits` when their
    attention differs (see `BlockDiffusionAdapter`).
    """

    name: ClassVar[str] = "generic"
    # Whether the model's forward takes `position_ids` (LLaDA's does not: it ignores padding and counts positions).
    accepts_position_ids: ClassVar[bool] = True

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
