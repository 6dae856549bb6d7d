"""`diffusion_generate`: semi-autoregressive block decoding for every diffusion-LM family, recording trajectories.

The loop is LLaDA's reference `generate` (blocks left to right, a fixed number of denoising steps per block, commit
the most confident predictions) generalized to batches, EOS stop, parallel (threshold) decoding and families whose
forward differs. Everything model-specific goes through the adapter; the loop never looks at the model's name.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from ..adapters import get_adapter
from ..blocks import block_spans
from .cache import DiffusionKVCache
from .config import DECODING_FIELDS, OUTPUT_FIELDS, DiffusionGenerationConfig
from .sampling import RowGenerators, propose_tokens, select_commits
from .schedules import BlockSchedule, factor_commit_counts, origin_commits
from .speed import committed_tokens, tokens_per_forward

logger = logging.getLogger(__name__)


@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """What `diffusion_generate` returns with `return_dict_in_generate=True`.

    Args:
        sequences (`torch.LongTensor` of shape `(B, prompt + max_new_tokens)`): left-padded prompts + completions.
        step_map (`torch.LongTensor` of shape `(B, max_new_tokens)`, *optional*): 0-based index of the forward pass
            (global over blocks) at which each completion token was committed; -1 where never decoded (after an EOS
            stop; those positions hold pad). Returned with `output_step_map=True`.
        nfe (`int`): number of denoising forward passes (of the batch).
        nfe_per_sample (`torch.LongTensor` of shape `(B,)`): the forward passes each sequence ran until it stopped,
            exactly the forwards it runs decoded alone: a sequence that stopped at EOS or finished its block early does
            not pay for its batch mates; a pass that committed only positions after its EOS (which become padding)
            counts, and so does one whose random draws committed nothing (Dream's `origin`).
        tokens_per_forward (`float`): committed tokens per forward a sequence ran,
            `(step_map >= 0).sum() / nfe_per_sample.sum()` (`generation.speed.tokens_per_forward`).
    """

    sequences: torch.LongTensor | None = None
    step_map: torch.LongTensor | None = None
    nfe: int | None = None
    nfe_per_sample: torch.LongTensor | None = None
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


class BidirectionalCacheSession:
    """Fast-dLLM's approximate KV cache for bidirectional families: `"prefix"` or `"dual"` (see `generation.cache`).

    The first forward of each block runs the whole `[prompt, canvas]` with exactly the arguments of
    `FullSequenceSession` (so its logits are the exact ones) and fills a fresh cache. Later forwards of the block run a
    window: the block and everything after it (prefix) or the block alone (dual), starting one position earlier when
    the family's logits are shifted (Dream: the logit at i - 1 predicts token i).
    """

    def __init__(self, model, adapter, prompt_ids, prompt_attention_mask, mode, refresh_interval=None):
        _check_approximate_cache(model, adapter, mode)
        self.model, self.adapter, self.mode = model, adapter, mode
        self.prompt_ids, self.prompt_attention_mask = prompt_ids, prompt_attention_mask
        self.cache_argument = _cache_argument(model)
        self.cache, self.block_start = None, None
        self.refresh_interval, self.forwards_in_block = refresh_interval, 0

    def block_logits(self, canvas: torch.Tensor, start: int, end: int) -> torch.Tensor:
        prompt_length = self.prompt_ids.shape[1]
        sequence = torch.cat([self.prompt_ids, canvas], dim=1)
        attention_mask = None
        if self.prompt_attention_mask is not None:
            ones = torch.ones_like(canvas, dtype=self.prompt_attention_mask.dtype)
            attention_mask = torch.cat([self.prompt_attention_mask, ones], dim=1)
        kwargs = self.adapter.forward_kwargs(sequence, attention_mask)
        if start != self.block_start:
            self.block_start, self.forwards_in_block = start, 0
        refresh = self.forwards_in_block == 0 or (
            self.refresh_interval is not None and self.forwards_in_block % self.refresh_interval == 0
        )
        self.forwards_in_block += 1
        if refresh:  # the block's first forward (or a scheduled refresh): the whole sequence, refilling the cache
            self.cache = DiffusionKVCache(self.mode)
            logits = self._forward(kwargs)
            return logits[:, prompt_length + start : prompt_length + end]
        window_start = max(prompt_length + start - self.adapter.logits_shift, 0)
        window_end = sequence.shape[1] if self.mode == "prefix" else prompt_length + end
        self.cache.set_window(window_start, window_end)
        logits = self._forward(_window_kwargs(kwargs, window_start, window_end))
        offset = prompt_length + start - window_start
        return logits[:, offset : offset + end - start]

    def _forward(self, kwargs: dict) -> torch.Tensor:
        kwargs.update({self.cache_argument: self.cache, "use_cache": True})
        out = self.model(**kwargs)
        return self.adapter.align_logits(out.logits if hasattr(out, "logits") else out[0])


def _window_kwargs(kwargs: dict, start: int, end: int) -> dict:
    """Full-sequence forward arguments cut to the query positions [start, end); keys still cover every position."""
    window = dict(kwargs)
    for name in ("input_ids", "position_ids"):
        if window.get(name) is not None:
            window[name] = window[name][:, start:end]
    mask = window.get("attention_mask")
    if mask is not None and mask.dim() == 4:  # (B, 1, queries, keys)
        window["attention_mask"] = mask[:, :, start:end]
    return window


def _cache_argument(model) -> str:
    """The name under which the model's forward takes a KV cache (`cache` since transformers 5.24), else None."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes the cache through
    parameters = inspect.signature(base.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def _check_approximate_cache(model, adapter, mode: str) -> None:
    """A clear error when the family or the loaded model class cannot decode with `cache=mode`."""
    if not adapter.supports_approximate_cache:
        exact = " It is cached exactly already (`use_cache=True`)." if adapter.supports_block_cache else ""
        raise ValueError(
            f"`cache={mode!r}` is Fast-dLLM's approximate KV cache for bidirectional families (LLaDA, Dream, generic "
            f"masked LMs); the '{adapter.name}' adapter does not support it.{exact} Use cache='none'."
        )
    if _cache_argument(model) is None:
        raise ValueError(
            f"`cache={mode!r}` needs a model whose forward takes a KV cache (`past_key_values`), but "
            f"{type(model).__name__}.forward does not. trl_t3d's native LLaDA and Dream classes do: load the "
            "checkpoint with `AutoModelForDiffusionLM.from_pretrained(...)` without `use_remote_code`, or use "
            "cache='none'."
        )


def make_session(
    model,
    adapter,
    prompt_ids,
    prompt_attention_mask,
    completion_length,
    block_length,
    use_cache,
    cache_mode="none",
    cache_refresh_interval=None,
):
    """Fast-dLLM's prefix/dual cache when asked for, else the adapter's own decoding session when it has one, else the
    exact block cache or the plain loop."""
    if use_cache and cache_mode != "none":
        return BidirectionalCacheSession(
            model, adapter, prompt_ids, prompt_attention_mask, cache_mode, cache_refresh_interval
        )
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
            valid = (*DECODING_FIELDS, "eos_token_id", "pad_token_id", *OUTPUT_FIELDS)
            raise ValueError(
                f"Unknown decoding arguments {unknown}. Valid ones are the fields of DiffusionGenerationConfig "
                f"({', '.join(valid)})."
            )
        for key, value in kwargs.items():
            setattr(config, key, value)
    config.validate()
    return config


def decoding_block_length(model, adapter, config) -> int:
    """The block length `diffusion_generate` decodes with: `config.block_length` when set; else, for a block-causal
    family, the block the model was trained with (`adapter.trained_block_length`, e.g. SDAR's `config.block_size`)
    when it divides `max_new_tokens`; else one block of `max_new_tokens`. Collection records this very value."""
    if config.block_length is not None:
        return int(config.block_length)
    if adapter.block_causal:
        trained_block = adapter.trained_block_length(model)
        if trained_block and config.max_new_tokens % int(trained_block) == 0:
            return int(trained_block)
    return int(config.max_new_tokens)


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


CONTEXT_KEYS = ("max_sequence_length", "max_position_embeddings")


def context_length(model) -> tuple[int, str] | None:
    """`(positions, config key)` the model was built for (LLaDA: `max_sequence_length`; most others:
    `max_position_embeddings`), None when its config names none."""
    config = getattr(model, "config", None)
    for cfg in (config, config.get_text_config() if hasattr(config, "get_text_config") else None):
        for key in CONTEXT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value, key
    return None


def _warn_beyond_context(model, input_ids, attention_mask, max_new_tokens: int) -> None:
    """Positions past the model's context were never trained (or do not exist): decoding there is not refused, as
    RoPE models run past it, but said, with by how much. Once per model and length reached."""
    context = context_length(model)
    if context is None:
        return
    limit, key = context
    total = input_ids.shape[1] + int(max_new_tokens)
    if total <= limit or total <= model.__dict__.get("_t3d_context_warned", 0):
        return
    model.__dict__["_t3d_context_warned"] = total
    longest = int(attention_mask.sum(-1).max()) if attention_mask is not None else input_ids.shape[1]
    logger.warning(
        "The prompts (%d positions, the longest %d tokens) plus max_new_tokens=%d take %d positions, %d more than the "
        "model's context of %d (`config.%s`): the completion is decoded at positions the model was never trained on. "
        "Shorten the prompts or `max_new_tokens` to fit %d positions.",
        input_ids.shape[1],
        longest,
        int(max_new_tokens),
        total,
        total - limit,
        limit,
        key,
        limit,
    )


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
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
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
        use_cache (`bool`): use the exact block KV cache when the family has one (same tokens, fewer FLOPs), and the
            approximate cache `config.cache` asks for; `False` decodes exactly with full-sequence forwards.
        generator (`torch.Generator` or a list of them, *optional*): randomness of sampling, random remasking and a
            random canvas (uniform-noise families). One generator draws batch-shaped tensors, so a sampled row
            depends on its batch mates; a list gives one generator per row (on the model's device): each row draws
            from its own, and only at the forwards it would run decoded alone, so a prompt samples the same tokens
            alone and in any padded batch. Greedy decoding draws nothing.
        step_callback (*optional*): `callback(step, canvas, undecided)` called before each forward with copies of the
            completion canvas and its undecided positions (debugging, trajectory replay).

    Returns:
        `torch.LongTensor` of sequences, or `DiffusionGenerateOutput` with `return_dict_in_generate=True`.
    """
    # 1. Settings and family.
    config = resolve_generation_config(model, generation_config, kwargs)
    adapter = _resolve_adapter(model, adapter, processing_class, config.mask_token_id)
    if config.block_length is None:
        block = decoding_block_length(model, adapter, config)
        if block != config.max_new_tokens:
            config.block_length = block  # decode with the block size the model was trained with
            config.validate()
        elif adapter.block_causal and adapter.trained_block_length(model):
            trained = int(adapter.trained_block_length(model))
            logger.warning(
                "The model was trained with blocks of %d tokens, which do not divide max_new_tokens=%d: it is decoded "
                "as one block of %d instead. Set max_new_tokens to a multiple of %d (e.g. %d) or give block_length.",
                trained,
                config.max_new_tokens,
                config.max_new_tokens,
                trained,
                -(-config.max_new_tokens // trained) * trained,
            )
    eos_ids = _as_list(config.eos_token_id) or list(adapter.eos_token_ids)
    pad_id = config.pad_token_id if config.pad_token_id is not None else adapter.pad_token_id
    fill_id = pad_id if pad_id is not None else (eos_ids[0] if eos_ids else None)
    stop_at_eos = bool(config.stop_at_eos) and bool(eos_ids) and fill_id is not None
    never_ids = (adapter.mask_token_id,) if adapter.noise == "mask" else ()  # the mask is noise, never a prediction

    # 2. Inputs.
    _check_inputs(input_ids, attention_mask, adapter, pad_id)
    _warn_beyond_context(model, input_ids, attention_mask, config.max_new_tokens)
    if attention_mask is not None and bool(attention_mask.bool().all()):
        attention_mask = None  # no padding: let the model take its fast path
    batch, device = input_ids.shape[0], input_ids.device
    length, block_length = config.max_new_tokens, config.resolved_block_length
    block_schedule = BlockSchedule(config, block_length)
    confidence_rule = config.threshold is not None or config.factor is not None
    proposal_remasking = "low_confidence" if config.remasking == "origin" else config.remasking

    if generator is not None and not isinstance(generator, torch.Generator):
        generator = RowGenerators(generator, batch)

    # 3. The canvas: every completion position undecided, holding the family's noise.
    undecided = torch.ones(batch, length, dtype=torch.bool, device=device)
    blank = torch.zeros(batch, length, dtype=torch.long, device=device)
    if isinstance(generator, RowGenerators):  # each row's noise from its own generator
        canvas = torch.cat(
            [
                adapter.noise_tokens(blank[row : row + 1], undecided[row : row + 1], rows, _vocab_size(model))
                for row, rows in enumerate(generator.generators)
            ]
        )
    else:
        canvas = adapter.noise_tokens(blank, undecided, generator, _vocab_size(model))
    step_map = torch.full((batch, length), -1, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    eos_tensor = torch.tensor(eos_ids, dtype=torch.long, device=device)
    session = make_session(
        model,
        adapter,
        input_ids,
        attention_mask,
        length,
        block_length,
        use_cache,
        config.cache,
        config.cache_refresh_interval,
    )
    if streamer is not None:
        streamer.put(input_ids.cpu())

    # 4. Blocks left to right; inside a block, commit the scheduled number of tokens per forward pass (plus what the
    #    threshold / factor rule passes, or Dream's `origin` draws).
    nfe = 0
    nfe_per_sample = torch.zeros(batch, dtype=torch.long, device=device)
    for start, end in block_spans(length, block_length):
        for step in range(block_schedule.num_steps):
            block_undecided = undecided[:, start:end]
            if not bool(block_undecided.any()):
                break  # threshold decoding or EOS stop finished the block early
            counts = block_schedule.counts(step, block_undecided)
            if not confidence_rule and config.remasking != "origin" and not bool(counts.any()):
                continue  # a step that commits nothing (Dream's early steps) would change nothing: skip its forward
            # The rows that run this forward: each would run it decoded alone (it has undecided positions in the
            # block and, on a fixed schedule, a count > 0). They pay for it, and only they draw random numbers.
            runs = block_undecided.any(-1) if confidence_rule or config.remasking == "origin" else counts > 0
            nfe_per_sample += runs
            if isinstance(generator, RowGenerators):
                generator.active = runs.tolist()
            if step_callback is not None:
                step_callback(nfe, canvas.clone(), undecided.clone())
            logits = session.block_logits(canvas, start, end)
            x0, confidence = propose_tokens(
                logits,
                proposal_remasking,
                float(config.temperature),
                top_k=config.top_k,
                top_p=config.top_p,
                never_ids=never_ids,
                generator=generator,
            )
            if config.remasking == "origin":
                commit = origin_commits(block_undecided, block_schedule.transfer_probability(step), generator)
            else:
                if config.factor is not None:
                    counts = torch.maximum(counts, factor_commit_counts(confidence, block_undecided, config.factor))
                commit = select_commits(confidence, block_undecided, counts, config.threshold)
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
    return DiffusionGenerateOutput(
        sequences=sequences,
        step_map=step_map if config.output_step_map else None,
        nfe=nfe,
        nfe_per_sample=nfe_per_sample,
        tokens_per_forward=tokens_per_forward(int(committed_tokens(step_map).sum()), int(nfe_per_sample.sum())),
    )
