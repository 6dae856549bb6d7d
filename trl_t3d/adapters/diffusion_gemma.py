"""DiffusionGemma (native in transformers): a causal encoder that writes a KV cache, and a bidirectional canvas decoder.

How the native model works (`transformers.models.diffusion_gemma`):

- `model.model.encoder` runs causally over the prompt (later: over each finished canvas too) and only fills the KV
  cache; its hidden states are not used by the decoder.
- `model(decoder_input_ids=canvas, cache=cache, ...)` runs the decoder over one canvas (the block; its length is
  `config.canvas_length` in native `generate`): every canvas token attends to every cached key and to the whole
  canvas (bidirectional), and reads the cache without writing to it. `logits[:, i]` predicts canvas token i.
- Encoder and decoder are the same transformer (tied weights); only the decoder has `self_conditioning`, an MLP
  that adds the softmax-weighted embeddings of the previous step's logits to the canvas embeddings (zeros when
  `self_conditioning_logits=None`, as at the first step of every canvas).
- Noise is uniform random tokens (no mask token). Native `generate` accepts low-entropy samples each step and
  re-draws all other positions.

What this adapter does (see `DiffusionGemmaAdapter`):

- Training (`completion_logits`): one encoder pass over `[prompt, x_0]` into a fresh, non-truncating cache and one
  decoder pass over the whole noisy completion `x_t`, with a per-layer 4D mask so that block b of `x_t` sees the
  prompt, the clean blocks < b and its own block: exactly what decoding block b sees, for all blocks at once.
  Self-conditioning is off (zeros), consistently in training and in our decoding.
- Decoding (`decoding_session`): the exact encoder cache of native `generate` (prompt, then each finished block,
  encoded once) and one decoder forward per denoising step, driven by `trl_t3d.generation.diffusion_generate`.
"""

from __future__ import annotations

import re

import torch

from ..blocks import block_ids
from .base import DiffusionAdapter, position_ids_from_mask

TEXT_LAYER_PATTERN = re.compile(r"(^|\.)(language_model|decoder)\.layers\.\d+\.")


def _text_config(config):
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def _model_config(model):
    """The model's config, also through a DDP or DeepSpeed wrapper (`.module`; DDP has no `.config`, DeepSpeed's engine
    has its own JSON config there)."""
    inner = getattr(model, "module", None)
    if inner is not None and getattr(inner, "config", None) is not None:
        return inner.config
    return getattr(model, "config", None)


class DiffusionGemmaAdapter(DiffusionAdapter):
    """`DiffusionGemmaForBlockDiffusion`: uniform noise, encoder KV prefix + bidirectional canvas decoder.

    Attributes (besides the base ones):
        decode_self_conditioning: feed the previous step's raw logits back as self-conditioning while decoding a
            block (native `generate` does, with temperature-scaled logits). Off by default, because the trained
            states (`completion_logits`) carry no self-conditioning; set it on an instance to decode like native.
    """

    name = "diffusion_gemma"
    model_types = ("diffusion_gemma",)
    noise = "uniform"
    block_causal = True  # encoder over clean earlier blocks, canvas bidirectional: train all blocks at once
    auto_class = "DiffusionGemmaForBlockDiffusion"  # top-level transformers class (AutoModelForImageTextToText too)
    # Text projections of encoder and decoder layers; the vision tower's layers share these names but are
    # `Gemma4ClippableLinear` wrappers PEFT cannot target, and the decoder's `self_conditioning` MLP gets no gradient
    # without self-conditioning: `resolve_lora_targets` returns full module names of the text layers only.
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_merge_unsafe_reason = (
        "DiffusionGemma's encoder and decoder share their base weights but get separate LoRA adapters, so merging "
        "would add both deltas to the one shared weight."
    )
    supports_gradient_checkpointing = True  # decoder layers checkpoint; encoder layers never (they write the cache)
    decode_self_conditioning: bool = False

    def __init__(self, config=None, tokenizer=None, mask_token_id: int | None = None):
        # Special ids live in the text sub-config.
        super().__init__(_text_config(config), tokenizer=tokenizer, mask_token_id=mask_token_id)
        self.config = config

    # ---------------------------------------------------------------- model facts
    @staticmethod
    def canvas_length(model) -> int | None:
        return getattr(_model_config(model), "canvas_length", None)

    def trained_block_length(self, model) -> int | None:
        """The block length decoding defaults to: the model's `canvas_length`."""
        return self.canvas_length(model)

    @staticmethod
    def _dtype(model) -> torch.dtype:
        return next(model.parameters()).dtype

    # ---------------------------------------------------------------- training forward (all blocks at once)
    def canvas_masks(self, model, key_valid: torch.Tensor, prompt_length: int, length: int, block_length: int):
        """Per-layer-type decoder masks: `x_t` block b sees valid context keys of blocks < b and its own block.

        `key_valid` (B, prompt_length + C) marks the real context keys (the cache); C = context completion tokens.
        In sliding-window layers the decoding cache keeps only the last `sliding_window - 1` context keys, so the
        mask keeps only those as well (what block b sees when decoded).
        """
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        device = key_valid.device
        batch, context = key_valid.shape
        ctx_blocks = block_ids(prompt_length, context - prompt_length, block_length, device)
        noisy_blocks = torch.div(torch.arange(length, device=device), block_length, rounding_mode="floor")
        ctx_end = prompt_length + noisy_blocks * block_length  # first context key block b may not see
        ctx_allowed = (ctx_blocks[None, :] < noisy_blocks[:, None])[None] & key_valid[:, None, :].bool()
        canvas_allowed = (noisy_blocks[None, :] == noisy_blocks[:, None])[None].expand(batch, -1, -1)
        text_config = _text_config(_model_config(model))
        implementation = text_config._attn_implementation or "sdpa"
        if implementation not in ALL_MASK_ATTENTION_FUNCTIONS:
            raise ValueError(
                f"attn_implementation={implementation!r} has no mask function; load DiffusionGemma with "
                "`attn_implementation='sdpa'` (or 'eager' / 'flex_attention')."
            )
        masks = {}
        for layer_type in set(text_config.layer_types):
            allowed_ctx = ctx_allowed
            if layer_type == "sliding_attention" and getattr(text_config, "sliding_window", None):
                first = ctx_end - (int(text_config.sliding_window) - 1)
                keys = torch.arange(context, device=device)
                allowed_ctx = allowed_ctx & (keys[None, :] >= first[:, None])[None]
            allowed = torch.cat([allowed_ctx, canvas_allowed], dim=-1)  # (B, L, context + L)

            def mask_function(batch_idx, head_idx, q_idx, kv_idx, allowed=allowed):
                return allowed[batch_idx, q_idx, kv_idx]

            masks[layer_type] = ALL_MASK_ATTENTION_FUNCTIONS[implementation](
                batch_size=batch,
                q_length=length,
                kv_length=context + length,
                mask_function=mask_function,
                attention_mask=None,
                allow_is_causal_skip=False,
                allow_is_bidirectional_skip=False,
                dtype=self._dtype(model),
                config=text_config,
                device=device,
            )
        return masks

    def completion_logits(
        self,
        model,
        prompt_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor | None,
        noisy_completion: torch.Tensor,
        clean_completion: torch.Tensor | None = None,
        block_length: int | None = None,
    ) -> torch.Tensor:
        """Canvas logits (B, L, V) of every block of `noisy_completion`, with gradient.

        The encoder runs causally over `[prompt, context]`, where the context is `clean_completion` (training,
        `x_0`) or, when absent, `noisy_completion` itself (decoding without cache: its earlier blocks are decided).
        The decoder runs once over all of `noisy_completion`; block b sees the prompt, context blocks < b and
        itself (`canvas_masks`). `block_length` defaults to `config.canvas_length`. Self-conditioning is zeros.
        Positions count real tokens only (left padding skipped), so a padded prompt gives the same logits.
        """
        from transformers import DynamicCache

        block_length = int(block_length or self.canvas_length(model) or noisy_completion.shape[1])
        batch, prompt_length = prompt_ids.shape
        length = noisy_completion.shape[1]
        context = clean_completion if clean_completion is not None else noisy_completion
        # The last block reads no context of its own: encode only what some block reads.
        context = context[:, : ((length - 1) // block_length) * block_length]
        device = prompt_ids.device
        prompt_valid = (
            prompt_attention_mask.bool()
            if prompt_attention_mask is not None
            else torch.ones(batch, prompt_length, dtype=torch.bool, device=device)
        )
        ones = torch.ones(batch, length, dtype=torch.bool, device=device)
        key_valid = torch.cat([prompt_valid, ones[:, : context.shape[1]]], dim=1)
        positions = position_ids_from_mask(torch.cat([prompt_valid, ones], dim=1))
        encoder_ids = torch.cat([prompt_ids, context], dim=1)
        masks = self.canvas_masks(model, key_valid, prompt_length, length, block_length)
        out = model(
            input_ids=encoder_ids,
            attention_mask=None if bool(key_valid.all()) else key_valid.long(),
            position_ids=positions[:, : encoder_ids.shape[1]],
            cache=DynamicCache(),  # full-length layers: each block reads its own sliding window through its mask
            decoder_input_ids=noisy_completion,
            decoder_attention_mask=masks,
            decoder_position_ids=positions[:, prompt_length:],
        )
        return out.logits

    def forward(self, model, input_ids, attention_mask=None, prompt_length=None, block_length=None):
        """Aligned logits of the completion part of `[prompt, completion]` (needs `prompt_length`)."""
        if prompt_length is None:
            raise ValueError("DiffusionGemma forwards need `prompt_length`: the prompt goes to the encoder.")
        prompt_mask = attention_mask[:, :prompt_length] if attention_mask is not None else None
        return self.completion_logits(
            model, input_ids[:, :prompt_length], prompt_mask, input_ids[:, prompt_length:], block_length=block_length
        )

    # ---------------------------------------------------------------- LoRA
    def resolve_lora_targets(self, model) -> list[str]:
        """Full names of the text layers' projections (encoder and decoder; not vision, not self-conditioning, and of
        the last encoder layer only k/v: its other outputs never reach the cache).

        Encoder and decoder layers share their weights; PEFT gives each wrapped module its own adapter, so the
        student's encoder and decoder get separate LoRA weights over the shared base (exact as an adapter checkpoint;
        `merge_and_unload` would add both deltas to the one shared weight, so keep the adapters unmerged).
        """
        wanted = set(self.lora_target_modules)
        text_config = _text_config(getattr(model, "config", None))
        last = getattr(text_config, "num_hidden_layers", 0) - 1
        found = []
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if not (isinstance(module, torch.nn.Linear) and leaf in wanted and TEXT_LAYER_PATTERN.search(name)):
                continue
            if f"language_model.layers.{last}." in name and leaf not in ("k_proj", "v_proj"):
                continue  # the last encoder layer only feeds the cache through its keys/values; the rest is unused
            found.append(name)
        if not found:
            raise ValueError(
                f"No text-layer projection {sorted(wanted)} found in this model (expected modules like "
                "`model.decoder.layers.0.self_attn.q_proj`). Pass `lora_target_modules` explicitly."
            )
        return found

    def fsdp_weight_sharing_groups(self, model) -> list[list[torch.nn.Module]]:
        """Encoder layer i with decoder layer i, the two embeddings with the LM head, the two final norms: the modules
        holding each shared weight, lifted to the layer (a `_no_split_modules` class) that contains them."""
        unit_names = set(getattr(model, "_no_split_modules", None) or [])
        units = [(name, module) for name, module in model.named_modules() if type(module).__name__ in unit_names]
        holders: dict[int, dict[int, torch.nn.Module]] = {}
        for name, module in model.named_modules():
            unit = next((u for prefix, u in units if name == prefix or name.startswith(prefix + ".")), module)
            for param in module.parameters(recurse=False):
                holders.setdefault(id(param), {})[id(unit)] = unit
        groups: list[dict[int, torch.nn.Module]] = []  # merge holders that share any parameter
        for modules in holders.values():
            if len(modules) < 2:
                continue
            touching = [g for g in groups if g.keys() & modules.keys()]
            merged = dict(modules)
            for group in touching:
                merged.update(group)
                groups.remove(group)
            groups.append(merged)
        return [list(group.values()) for group in groups]

    # ---------------------------------------------------------------- decoding
    def decoding_session(self, model, prompt_ids, prompt_attention_mask, completion_length, block_length, use_cache):
        """`diffusion_generate`'s hook: the exact encoder cache of native `generate` (None without cache)."""
        if not use_cache:
            return None
        return DiffusionGemmaSession(self, model, prompt_ids, prompt_attention_mask, completion_length)


class DiffusionGemmaSession:
    """Native decoding through our loop: each finished block is encoded once into the cache; each step runs the decoder.

    The first forward of a block carries the not yet encoded tokens (the prompt, then the block just finished) as
    `input_ids`, so encoding adds no forward call; later steps of the block run the decoder alone. The cache is the
    one native `generate` uses (`DynamicCache(config=...)`, sliding-window layers kept at their window).
    """

    def __init__(self, adapter, model, prompt_ids, prompt_attention_mask, completion_length):
        from transformers import DynamicCache

        self.adapter, self.model, self.prompt_ids = adapter, model, prompt_ids
        batch, prompt_length = prompt_ids.shape
        device = prompt_ids.device
        prompt_valid = (
            prompt_attention_mask.bool()
            if prompt_attention_mask is not None
            else torch.ones(batch, prompt_length, dtype=torch.bool, device=device)
        )
        self.key_valid = torch.cat(
            [prompt_valid, torch.ones(batch, completion_length, dtype=torch.bool, device=device)], dim=1
        )
        self.padded = not bool(prompt_valid.all())
        self.positions = position_ids_from_mask(self.key_valid)
        self.cache = DynamicCache(config=_text_config(model.config))
        self.encoded = 0  # positions of [prompt, completion] in the cache
        self.block_start = None
        self.self_conditioning_logits = None

    def block_logits(self, canvas: torch.Tensor, start: int, end: int) -> torch.Tensor:
        prompt_length = self.prompt_ids.shape[1]
        context_end = prompt_length + start
        kwargs = {}
        if self.encoded < context_end:
            sequence = torch.cat([self.prompt_ids, canvas], dim=1)
            kwargs = {
                "input_ids": sequence[:, self.encoded : context_end],
                "attention_mask": self.key_valid[:, :context_end].long() if self.padded else None,
                "position_ids": self.positions[:, self.encoded : context_end],
            }
            self.encoded = context_end
        if self.block_start != start:
            self.block_start, self.self_conditioning_logits = start, None
        out = self.model(
            **kwargs,
            cache=self.cache,
            decoder_input_ids=canvas[:, start:end],
            decoder_attention_mask=self.key_valid[:, : prompt_length + end] if self.padded else None,
            decoder_position_ids=self.positions[:, prompt_length + start : prompt_length + end],
            self_conditioning_logits=self.self_conditioning_logits,
        )
        if self.adapter.decode_self_conditioning:
            self.self_conditioning_logits = out.logits
        return out.logits
