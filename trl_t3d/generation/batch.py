"""`decode_prompts`: the one loop that decodes a list of prompts, used by collection, `evaluate_few_step` and lm-eval's
`generate_until` alike.

Prompts (token ids) are sorted by length, decoded in left-padded batches of `batch_size` with `diffusion_generate`,
and returned in input order, each with its completion ids, step map, the forwards it ran and, on request, its text.
With `seeds`, every prompt gets its own generator (`seeds[i]` for prompt i), so a sampled prompt (temperature > 0,
random remasking, a random canvas) decodes the same whatever the batch size, the sort order or its batch mates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .speed import committed_tokens, forwards_in_step_map


@dataclass
class DecodedPrompt:
    """One prompt's decoding.

    Attributes:
        completion_ids (`list[int]`): the whole canvas, `max_new_tokens` ids (pad after an EOS stop).
        step_map (`list[int]`): forward index at which each completion token was committed; -1 after an EOS stop.
        nfe (`int`): the forwards it ran until it stopped, what it pays decoded alone
            (`DiffusionGenerateOutput.nfe_per_sample`).
        batch (`int`): which batch it was decoded in (0, 1, ...).
        batch_nfe (`int`): the decoder's forwards for its whole batch.
        seconds (`float`): its share of its batch's decoding time (batch seconds / batch size).
        text (`str`, *optional*): the completion up to its first EOS, decoded without special tokens (`return_text`).
    """

    completion_ids: list[int]
    step_map: list[int]
    nfe: int
    batch: int
    batch_nfe: int
    seconds: float
    text: str | None = None

    @property
    def committed(self) -> int:
        """Tokens it kept (a step >= 0): the numerator of tokens per forward (`generation.speed`)."""
        return committed_tokens(self.step_map)


def completion_text(tokenizer, ids: Sequence[int], eos_token_ids) -> str:
    """The text of a completion: its ids up to (not including) the first EOS, decoded without special tokens."""
    eos = {int(e) for e in eos_token_ids if e is not None}
    ids = list(ids)
    for i, token in enumerate(ids):
        if token in eos:
            ids = ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of the prompts padded on the left to the longest one."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _setting(model, generation_config, name: str):
    """A field of the decoding settings as `diffusion_generate` resolves them (the given config or dict, else the
    model's own), without validating them twice."""
    config = generation_config
    if config is None:
        config = getattr(model, "diffusion_generation_config", None)
    if isinstance(config, dict):
        return config.get(name)
    return getattr(config, name, None)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def decode_prompts(
    model,
    prompts: Sequence[Sequence[int]],
    generation_config=None,
    *,
    adapter=None,
    processing_class=None,
    batch_size: int = 8,
    seeds: Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    return_text: bool = False,
    progress=None,
    device=None,
) -> list[DecodedPrompt]:
    """Decode every prompt and return one `DecodedPrompt` per prompt, in the order of `prompts`.

    Args:
        model: a diffusion LM (eval mode is the caller's).
        prompts: token ids of each prompt (no padding).
        generation_config: a `DiffusionGenerationConfig` or dict (`diffusion_generate`'s); the step map and the
            output object are always asked for.
        adapter, processing_class: the family adapter and the tokenizer (special tokens; the text with
            `return_text`).
        batch_size: prompts decoded together; they are sorted by length first (less padding).
        seeds: one seed per prompt: prompt i draws its random numbers from a generator seeded with `seeds[i]`, on
            the model's device, so its tokens do not depend on the batch it lands in. `None` draws from the global
            generator (greedy decoding draws nothing).
        pad_token_id: left-padding id; defaults to the settings' `pad_token_id`, else the adapter's.
        use_cache: `diffusion_generate`'s.
        return_text: also decode each completion's text (up to its first EOS, without special tokens).
        progress: anything with `update(n)` (a tqdm bar), advanced by the prompts of each batch.
        device: where the prompts go; defaults to the model's.
    """
    from . import diffusion_generate  # the package's, looked up at call time (tests replace it there)

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"Got {len(seeds)} seeds for {len(prompts)} prompts: give one per prompt.")
    device = torch.device(device) if device is not None else _model_device(model)
    if adapter is None:
        from .decode import _resolve_adapter

        adapter = _resolve_adapter(model, None, processing_class, _setting(model, generation_config, "mask_token_id"))
    if pad_token_id is None:
        pad_token_id = _setting(model, generation_config, "pad_token_id")
    if pad_token_id is None and adapter is not None:
        pad_token_id = adapter.pad_token_id
    if pad_token_id is None:
        raise ValueError("No pad token: set `tokenizer.pad_token` (e.g. to the EOS token) to batch prompts.")
    eos_token_ids = None
    if return_text:
        eos = _setting(model, generation_config, "eos_token_id")
        if eos is None:
            eos = list(adapter.eos_token_ids) if adapter is not None else []
        eos_token_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]

    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    results: list[DecodedPrompt | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = left_pad([prompts[i] for i in rows], pad_token_id, device)
        generator = None
        if seeds is not None:
            generator = [torch.Generator(device=device).manual_seed(int(seeds[i])) for i in rows]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        with torch.no_grad():
            out = diffusion_generate(
                model,
                input_ids,
                attention_mask,
                generation_config,
                adapter=adapter,
                processing_class=processing_class,
                use_cache=use_cache,
                generator=generator,
                return_dict_in_generate=True,
                output_step_map=True,
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        if getattr(out, "step_map", None) is None:
            raise RuntimeError("`diffusion_generate` returned no `step_map`; trajectories need one.")
        completions = out.sequences[:, input_ids.shape[1] :].tolist()
        step_maps = out.step_map.tolist()
        per_sample = getattr(out, "nfe_per_sample", None)
        per_sample = per_sample.tolist() if per_sample is not None else [forwards_in_step_map(s) for s in step_maps]
        for row, index in enumerate(rows):
            results[index] = DecodedPrompt(
                completion_ids=completions[row],
                step_map=step_maps[row],
                nfe=int(per_sample[row]),
                batch=start // batch_size,
                batch_nfe=int(out.nfe) if out.nfe is not None else 0,
                seconds=seconds / len(rows),
                text=completion_text(processing_class, completions[row], eos_token_ids) if return_text else None,
            )
        if progress is not None:
            progress.update(len(rows))
    return results
