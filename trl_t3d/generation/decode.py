"""`diffusion_generate`: semi-autoregressive block decoding for every diffusion-LM family, recording trajectories.

The loop is LLaDA's reference `generate` (blocks left to right, a fixed number of denoising steps per block, commit
the most confident predictions) generalized to batches, EOS stop, parallel (threshold) decoding and families whose
forward differs. Everything model-specific goes through the adapter; the loop never looks at the model's name.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from ..adapters import get_adapter
from .config import DiffusionGenerationConfig
from .sampling import propose_tokens, select_commits

logger = logging.getLogger(__name__)


@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """What `diffusion_generate` returns with `return_dict_in_generate=True`.

    Args:
        sequences (`torch.LongTensor` of shape `(B, prompt + max_new_tokens)`): left-padded prompts + completions.
        step_map (`torch.LongTensor` of shape `(B, max_new_tokens)`, *optional*): 0-based index of the forward pass
            (global over blocks) at which each completion token was committed; -1 where never decoded (after an EOS
            stop; those positions hold pad). Returned with `output_step_map=True`.
        nfe (`int`): number of denoising forward passes.
        tokens_per_forward (`float`): committed tokens per forward pass and sequence, `(step_map >= 0).sum() / (B * nfe)`.
    """

    sequences: torch.LongTensor | None = None
    step_map: torch.LongTensor | None = None
    nfe: int | None = None
    tokens_per_forward: float | None = None


# ---------------------------------------------------------------------------------------------- forward sessions
class FullSequenceSession:
    """No cache: every step runs the whole `[prompt, canvas]` through `adapter.completion_logits`."""

    def __init__(self, model, adapter, prompt_ids, prompt_attention_mask, block_length):
        self.model, self.adapter = model, adapter
        self.prompt_ids, self.prompt_attention_mask, self.block_length = (
            prompt_ids,
            prompt_attention_mask,
            block_length,
        )

    def block_logits(self, canvas: torch.Tensor, start: int, end: int) -> torch.Tensor:
        logits = self.adapter.completion_logits(
            self.model, self.prompt_ids, self.prompt_attention_mask, canvas, block_length=self.block_length
        )
        return logits[:, start:end]


class BlockCacheSession:
    """Exact KV cache for block-causal families: finished blocks are cached, each step runs only the current block.

    Whatever lies between the cache's end and the current block (the prompt, then the block just finished) is
    prepended to the block's first forward and kept in the cache, so no forward pass is added.
    """

    def __init__(self, model, adapter, prompt_ids, prompt_attention_mask, block_length, completion_length):
        self.model, self.adapter, self.prompt_ids, self.block_length = model, adapter, prompt_ids, block_length
        batch, prompt_length = prompt_ids.shape
        prompt_valid = (
            prompt_attention_mask.bool()
            if prompt_attention_mask is not None
            else torch.ones(batch, prompt_length, dtype=torch.bool, device=prompt_ids.device)
        )
        ones = torch.ones(batch, completion_length, dtype=torch.bool, device=prompt_ids.device)
        self.key_valid = torch.cat([prompt_valid, ones], dim=1)
        self.cache = adapter.init_cache(model)
        self.cached = 0  # positions of [prompt, completion] held by the cache

    def block_logits(self, canvas: torch.Tensor, start: int, end: int) -> torch.Tensor:
        prompt_length = self.prompt_ids.shape[1]
        sequence = torch.cat([self.prompt_ids, canvas], dim=1)
        chunk_start, block_start = self.cached, prompt_length + start
        logits = self.adapter.cached_forward(
            self.model,
            self.cache,
            sequence[:, chunk_start : prompt_length + end],
            self.key_valid[:, : prompt_length + end],
            prompt_length,
            self.block_length,
            keep=block_start - chunk_start,
        )
        self.cached = block_start
        return logits[:, block_start - chunk_start :]


def make_session(model, adapter, prompt_ids, prompt_attention_mask, completion_length, block_length, use_cache):
    """The adapter's own decoding session when it has one, else the block cache or the plain loop."""
    session = adapter.decoding_session(
        model, prompt_ids, prompt_attention_mask, completion_length, block_length, use_cache
    )
    if session is not None:
        return session
    if use_cache and adapter.supports_block_cache:
        return BlockCacheSession(model, adapter, prompt_ids, prompt_attention_mask, block_length, completion_length)
    return FullSequenceSession(model, adapter, prompt_ids, prompt_attention_mask, block_length)


# ---------------------------------------------------------------------------------------------- helpers
def resolve_generation_config(model, generation_config, kwargs) -> DiffusionGenerationConfig:
    """Copy of the config to use (argument, else the model's, else defaults) updated with `kwargs`; validated."""
    if generation_config is None:
        generation_config = getattr(model, "diffusion_generation_config", None)
    if generation_config is None:
        config = DiffusionGenerationConfig()
    elif isinstance(generation_config, DiffusionGenerationConfig):
        config = copy.deepcopy(generation_config)
    elif isinstance(generation_config, dict):
        config = DiffusionGenerationConfig(**generation_config)
    elif isinstance(generation_config, GenerationConfig):
        config = DiffusionGenerationConfig(**generation_config.to_diff_dict())
    else:
        raise ValueError(
            f"`generation_config` must be a DiffusionGenerationConfig, a GenerationConfig or a dict, got "
            f"{type(generation_config).__name__}."
        )
    if kwargs:
        unknown = sorted(k for k in kwargs if not hasattr(config, k))
        if unknown:
            raise ValueError(
                f"Unknown decoding arguments {unknown}. Valid ones are the fields of DiffusionGenerationConfig "
                "(max_new_tokens, block_length, steps, tokens_per_step, remasking, threshold, temperature, top_k, "
                "top_p, mask_token_id, eos_token_id, stop_at_eos, output_step_map, return_dict_in_generate)."
            )
        for key, value in kwargs.items():
            setattr(config, key, value)
    config.validate()
    return config


def _resolve_adapter(model, adapter, processing_class, mask_token_id):
    adapter = get_adapter(model, adapter, tokenizer=processing_class, mask_token_id=mask_token_id)
    if mask_token_id is not None and adapter.noise == "mask" and adapter.mask_token_id != mask_token_id:
        adapter = copy.copy(adapter)
        adapter.mask_token_id = int(mask_token_id)
    return adapter


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _vocab_size(model) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    if size is None and hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        size = model.get_output_embeddings().weight.shape[0]
    return size


def _check_inputs(input_ids, attention_mask, adapter, pad_token_id):
    if input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must be (batch, prompt_length), got shape {tuple(input_ids.shape)}.")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError("`attention_mask` must have the shape of `input_ids`.")
        valid = attention_mask.bool()
        # Left padding: once a row has a real token, every later token is real.
        if bool((valid[:, :-1] & ~valid[:, 1:]).any()):
            raise ValueError(
                "The prompts are right padded; diffusion decoding appends the completion right after the prompt. "
                "Pad on the left: `tokenizer.padding_side = 'left'`."
            )
    else:
        valid = torch.ones_like(input_ids, dtype=torch.bool)
    if adapter.noise == "mask":
        if pad_token_id is not None and pad_token_id == adapter.mask_token_id:
            raise ValueError(
                f"pad_token_id == mask_token_id == {pad_token_id}: padding would be read as noise. Use a distinct "
                "pad token (e.g. `tokenizer.pad_token = tokenizer.eos_token`)."
            )
        if bool(((input_ids == adapter.mask_token_id) & valid).any()):
            raise ValueError(
                f"A prompt contains the mask token (id {adapter.mask_token_id}); the model would treat it as a "
                "position to fill. Remove it from the prompt (or escape it in the text) before decoding."
            )


def _stop_finished_rows(canvas, undecided, step_map, finished, eos_ids, fill_id):
    """Rows whose first decided EOS has everything before it decided stop: the rest becomes pad with step -1."""
    is_eos = torch.isin(canvas, eos_ids) & ~undecided
    has_eos = is_eos.any(-1)
    length = canvas.shape[1]
    positions = torch.arange(length, device=canvas.device)
    first_eos = torch.where(is_eos, positions, length).min(-1).values
    undecided_before = (undecided & (positions[None, :] < first_eos[:, None])).any(-1)
    newly = has_eos & ~undecided_before & ~finished
    if bool(newly.any()):
        after = newly[:, None] & (positions[None, :] > first_eos[:, None])
        canvas.masked_fill_(after, fill_id)
        undecided &= ~after
        step_map.masked_fill_(after, -1)
        finished |= newly
    return finished


# ---------------------------------------------------------------------------------------------- the loop
@torch.no_grad()
def diffusion_generate(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: DiffusionGenerationConfig | None = None,
    *,
    adapter=None,
    processing_class=None,
    streamer=None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    step_callback=None,
    **kwargs,
):
    """Decode completions of left-padded prompts with a diffusion LM.

    Args:
        model: any supported diffusion LM (see `trl_t3d.adapters`).
        input_ids (`torch.LongTensor` of shape `(B, P)`): left-padded prompts.
        attention_mask (`torch.Tensor` of shape `(B, P)`, *optional*): 1 for real tokens, 0 for left padding.
        generation_config (`DiffusionGenerationConfig`, *optional*): defaults to `model.diffusion_generation_config`,
            else the defaults; `kwargs` override its fields (e.g. `block_length=4`).
        adapter (`str` or `DiffusionAdapter`, *optional*): the family; detected from the config when omitted.
        processing_class: tokenizer, used to find special tokens.
        streamer (`transformers.generation.BaseStreamer`, *optional*): gets the prompt, then each finished block.
        use_cache (`bool`): use the exact block KV cache when the family has one (same tokens, fewer FLOPs).
        generator (`torch.Generator`, *optional*): randomness of sampling and random remasking.
        step_callback (*optional*): `callback(step, canvas, undecided)` called before each forward with copies of the
            completion canvas and its undecided positions (debugging, trajectory replay).

    Returns:
        `torch.LongTensor` of sequences, or `DiffusionGenerateOutput` with `return_dict_in_generate=True`.
    """
    # 1. Settings and family.
    config = resolve_generation_config(model, generation_config, kwargs)
    adapter = _resolve_adapter(model, adapter, processing_class, config.mask_token_id)
    if config.block_length is None and adapter.block_causal:
        trained_block = adapter.trained_block_length(model)
        if trained_block and config.max_new_tokens % int(trained_block) == 0:
            config.block_length = int(trained_block)  # decode with the block size the model was trained with
            config.validate()
    eos_ids = _as_list(config.eos_token_id) or list(adapter.eos_token_ids)
    pad_id = config.pad_token_id if config.pad_token_id is not None else adapter.pad_token_id
    fill_id = pad_id if pad_id is not None else (eos_ids[0] if eos_ids else None)
    stop_at_eos = bool(config.stop_at_eos) and bool(eos_ids) and fill_id is not None
    never_ids = (adapter.mask_token_id,) if adapter.noise == "mask" else ()  # the mask is noise, never a prediction

    # 2. Inputs.
    _check_inputs(input_ids, attention_mask, adapter, pad_id)
    if attention_mask is not None and bool(attention_mask.bool().all()):
        attention_mask = None  # no padding: let the model take its fast path
    batch, device = input_ids.shape[0], input_ids.device
    length, block_length = config.max_new_tokens, config.resolved_block_length
    schedule = config.block_schedule()
    threshold = config.threshold

    # 3. The canvas: every completion position undecided, holding the family's noise.
    undecided = torch.ones(batch, length, dtype=torch.bool, device=device)
    canvas = adapter.noise_tokens(
        torch.zeros(batch, length, dtype=torch.long, device=device), undecided, generator, _vocab_size(model)
    )
    step_map = torch.full((batch, length), -1, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    eos_tensor = torch.tensor(eos_ids, dtype=torch.long, device=device)
    session = make_session(model, adapter, input_ids, attention_mask, length, block_length, use_cache)
    if streamer is not None:
        streamer.put(input_ids.cpu())

    # 4. Blocks left to right; inside a block, commit the scheduled number of tokens per forward pass.
    nfe = 0
    for start in range(0, length, block_length):
        end = start + block_length
        for num_to_commit in schedule:
            block_undecided = undecided[:, start:end]
            if not bool(block_undecided.any()):
                break  # threshold decoding or EOS stop finished the block early
            if step_callback is not None:
                step_callback(nfe, canvas.clone(), undecided.clone())
            logits = session.block_logits(canvas, start, end)
            x0, confidence = propose_tokens(
                logits,
                config.remasking,
                float(config.temperature),
                top_k=config.top_k,
                top_p=config.top_p,
                never_ids=never_ids,
                generator=generator,
            )
            counts = torch.full((batch,), num_to_commit, dtype=torch.long, device=device)
            commit = select_commits(confidence, block_undecided, counts, threshold)
            canvas[:, start:end] = torch.where(commit, x0, canvas[:, start:end])
            undecided[:, start:end] &= ~commit
            step_map[:, start:end].masked_fill_(commit, nfe)
            nfe += 1
            if stop_at_eos:
                finished = _stop_finished_rows(canvas, undecided, step_map, finished, eos_tensor, fill_id)
        if bool(undecided[:, start:end].any()):
            raise RuntimeError("A block ended with undecided positions; the commit schedule is inconsistent.")
        if streamer is not None:
            streamer.put(canvas[:, start:end].cpu())
        if stop_at_eos and bool(finished.all()):
            # 5. Every sequence ended: the remaining blocks are padding, no more forward passes.
            canvas.masked_fill_(undecided, fill_id)
            undecided.zero_()
            break
    if streamer is not None:
        streamer.end()

    # 6. Outputs.
    sequences = torch.cat([input_ids, canvas], dim=1)
    if not config.return_dict_in_generate:
        return sequences
    committed = int((step_map >= 0).sum())
    return DiffusionGenerateOutput(
        sequences=sequences,
        step_map=step_map if config.output_step_map else None,
        nfe=nfe,
        tokens_per_forward=committed / (batch * nfe) if nfe else 0.0,
    )
